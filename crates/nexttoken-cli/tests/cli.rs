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

/// The command failed with exit status 1 and a message containing `expected`, and did not
/// panic.
fn assert_fails_with(output: &Output, expected: &str) {
    assert_exits_with(output, 1, expected);
}

/// The command-line parser refused the arguments: exit status 2, as clap and Unix tools use.
fn assert_usage_error(output: &Output, expected: &str) {
    assert_exits_with(output, 2, expected);
}

fn assert_exits_with(output: &Output, code: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
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
fn saved_logits_are_the_ones_each_id_was_selected_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logits.safetensors");
    let model = tiny_trained();
    // Two lengths: two batches, one of them with two rows; with the golden case of each prompt.
    let prompts = ["Every effort moves you", "The", "Hello, I am"];
    let cases = ["few_tokens", "one_token", "hello"];
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
        // The first row is the prompt's last-position logits, which Hugging Face recorded: the
        // values themselves, not probabilities or a rescaling with the same argmax.
        let expected = golden_logits(cases[index]);
        assert_eq!(expected.len(), vocab);
        let worst = values[..vocab]
            .iter()
            .zip(&expected)
            .map(|(a, e)| (a - e).abs() / e.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4, "prompt {index}: differs by {worst:e}");
    }
}

/// Hugging Face's first-step logits for a case of the tiny-trained golden.
fn golden_logits(case: &str) -> Vec<f32> {
    let bytes =
        std::fs::read(repo().join("tests/goldens/tiny-trained.logits.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensor(case)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn saving_logits_to_an_unwritable_path_fails_before_generating() {
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
        "--save-logits /nonexistent-dir/logits.safetensors: cannot write there",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "generated before failing");
}

#[test]
fn saving_logits_to_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let output = nexttoken(&["generate", "-n", "2", "--save-logits", &path, "Hi"]);
    assert_fails_with(&output, "that is a directory");
    assert!(output.stdout.is_empty(), "generated before failing");
}

/// A failed run leaves an existing logits file as it was, and no temporary file beside it.
#[test]
fn a_failed_run_keeps_the_previous_logits_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logits.safetensors");
    std::fs::write(&path, b"previous").unwrap();
    let output = nexttoken(&[
        "generate",
        "--backend",
        "cuda",
        "--save-logits",
        &path.display().to_string(),
        "Hi",
    ]);
    assert_fails_with(&output, "--features cuda");
    assert_eq!(std::fs::read(&path).unwrap(), b"previous");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "{names:?}");
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

#[test]
fn missing_model() {
    assert_fails_with(
        &nexttoken(&["generate", "--model", "/no/such/dir", "Hi"]),
        "/no/such/dir does not exist",
    );
}

#[test]
fn unknown_backend() {
    assert_usage_error(
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
    assert!(flex.contains("yes") && flex.contains("ready"), "{flex}");
    // Human text, not a device's Rust debug output.
    assert!(
        !stdout.contains("Device") && !stdout.contains("::"),
        "{stdout}"
    );
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

/// The GPU runtime's autotune results go to the user's cache directory wherever the binary is
/// started: cubecl's default is the `target/` of the Cargo workspace around the current
/// directory, which would write into a user's own project and keep one cache per project.
#[test]
fn wgpu_keeps_its_kernel_caches_in_the_user_cache_wherever_it_starts() {
    if !compiled("wgpu") {
        eprintln!("wgpu is not compiled into this build: nothing to check");
        return;
    }
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("Cargo.toml"),
        "[package]\nname = \"someone-elses\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(["generate", "--backend", "wgpu", "--model", &tiny_trained()])
        .args(["-n", "2", "Hi"])
        .current_dir(project.path())
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        !project.path().join("target").exists(),
        "nothing is written into the project the binary runs in"
    );
    assert!(cache.path().join("cubecl").is_dir(), "{output:?}");
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
fn zero_threads() {
    assert_usage_error(&nexttoken(&["bench", "-t", "0"]), "--threads");
}

/// Spawns `nexttoken` with piped stdout and stderr.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(args)
        .env_remove("NEXTTOKEN_MODEL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the nexttoken binary starts")
}

/// Waits for `child` to exit, failing the test if it takes longer than `limit` (a hang, not a
/// speed check: the bound is many times what the work needs).
fn wait_within(child: &mut std::process::Child, limit: std::time::Duration) -> Output {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr,
    }
}

/// Starts a generation that would run for minutes on its own, and reads its first `bytes`
/// bytes of text: it is under way.
fn spawn_endless_generation(bytes: usize) -> std::process::Child {
    use std::io::Read;
    let mut child = spawn(&["generate", "-n", "1000000", "--ignore-eos", "Every effort"]);
    let mut first = vec![0; bytes];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    child
}

/// `nexttoken generate ... | head -c 100`: the reader goes away and the generation ends at
/// once, quietly, as Unix tools end (by SIGPIPE).
#[test]
fn closing_stdout_stops_the_generation_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = spawn_endless_generation(100);
    drop(child.stdout.take());
    let output = wait_within(&mut child, std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(stderr.is_empty(), "printed to stderr: {stderr}");
}

/// `nexttoken info | grep -q flex`: every subcommand, not only `generate`.
#[test]
fn info_into_a_closed_pipe_is_quiet() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .arg("info")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    // (Not `is_empty`: a Vulkan driver may print its own notices while the backends are probed.)
    for complaint in ["panicked", "Broken pipe", "error"] {
        assert!(!stderr.contains(complaint), "printed to stderr: {stderr}");
    }
}

/// Ctrl-C ends the generation after the current step, then prints the timings so far, like
/// llama-cli's summary; the exit status says it was interrupted (130).
#[test]
fn ctrl_c_stops_and_prints_the_timings() {
    use std::io::Read;
    let mut child = spawn_endless_generation(64);
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    // Keep reading stdout, or the child could block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).map(|_| rest)
    });
    let output = wait_within(&mut child, std::time::Duration::from_secs(20));
    reader.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    for expected in ["load:", "prompt:", "generated:", "tokens/s", "interrupted"] {
        assert!(stderr.contains(expected), "`{expected}` not in: {stderr}");
    }
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

/// The built-in model is in the binary: a copy of it run from another directory (as after
/// `cargo install`, or with the checkout moved) still generates.
#[test]
fn the_built_in_model_works_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("nexttoken");
    std::fs::copy(env!("CARGO_BIN_EXE_nexttoken"), &binary).unwrap();
    let output = Command::new(&binary)
        .args(["generate", "-n", "4", "--json", "Every effort moves you"])
        .current_dir(dir.path())
        .env_remove("NEXTTOKEN_MODEL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["ids"].as_array().unwrap().len(), 4);
}

/// A fake Hub serving the tiny-trained fixture as `repo`, and a fresh `HF_HOME`.
fn fake_hub(repo_id: &str) -> (nexttoken_hub::fake::FakeHub, tempfile::TempDir) {
    let hub = nexttoken_hub::fake::FakeHub::start();
    hub.add_folder(repo_id, &repo().join("tests/fixtures/tiny-trained"));
    (hub, tempfile::tempdir().unwrap())
}

/// `nexttoken` with the Hub at `hub` and the cache in `home`.
fn with_hub(hub: &nexttoken_hub::fake::FakeHub, home: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexttoken"));
    command
        .env_remove("NEXTTOKEN_MODEL")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home);
    command
}

#[test]
fn a_hub_model_by_name_downloads_once_then_runs_offline() {
    let (hub, home) = fake_hub("openai-community/gpt2");
    let args = [
        "generate",
        "--model",
        "openai-community/gpt2",
        "-n",
        "8",
        "--json",
        "Every effort moves you",
    ];
    let ids = |output: Output| -> Vec<u64> {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        serde_json::from_value(line["ids"].clone()).unwrap()
    };
    let expected = golden_ids("Every effort moves you")[..8].to_vec();
    assert_eq!(
        ids(with_hub(&hub, home.path()).args(args).output().unwrap()),
        expected
    );
    assert!(
        home.path()
            .join("hub/models--openai-community--gpt2/refs/main")
            .is_file()
    );
    let asked = hub.requests();
    assert_eq!(
        ids(with_hub(&hub, home.path()).args(args).output().unwrap()),
        expected
    );
    let offline = with_hub(&hub, home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(ids(offline), expected);
    assert_eq!(hub.requests(), asked, "a cached model touched the network");
}

#[test]
fn hub_errors_are_clear() {
    let (hub, home) = fake_hub("openai-community/gpt2");
    let run = |extra: &[(&str, &str)], model: &str| {
        let mut command = with_hub(&hub, home.path());
        command.envs(extra.iter().copied());
        command
            .args(["generate", "-m", model, "-n", "2", "Hi"])
            .output()
            .unwrap()
    };
    assert_fails_with(
        &run(&[], "nobody/nothing"),
        "no model repo `nobody/nothing`",
    );
    assert_fails_with(
        &run(&[("HF_HUB_OFFLINE", "1")], "openai-community/gpt2"),
        "HF_HUB_OFFLINE is set and `openai-community/gpt2` is not in the cache",
    );
    hub.gate("openai-community/gpt2", "hf_right");
    assert_fails_with(&run(&[], "openai-community/gpt2"), "set HF_TOKEN");
    assert_fails_with(
        &run(&[("HF_TOKEN", "hf_wrong")], "openai-community/gpt2"),
        "is gated or private",
    );
    let granted = run(&[("HF_TOKEN", "hf_right")], "openai-community/gpt2");
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
}

/// A folder named like a repo id is used, and the Hub is never asked.
#[test]
fn a_local_path_wins_over_a_repo_id() {
    let (hub, home) = fake_hub("gpt2");
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("gpt2");
    std::fs::create_dir(&local).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(
            repo().join("tests/fixtures/tiny-trained").join(name),
            local.join(name),
        )
        .unwrap();
    }
    let output = with_hub(&hub, home.path())
        .current_dir(work.path())
        .args(["generate", "-m", "gpt2", "-n", "2", "Hi"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(hub.requests(), 0);
}

/// A write that fails midway (a file-size limit stands in for a full disk, which cannot be
/// made without mounting a filesystem) is an error naming the cache, and leaves no file there
/// that a later run would trust.
#[test]
fn a_full_disk_while_downloading() {
    let (hub, home) = fake_hub("openai-community/gpt2");
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec '{}' generate -m openai-community/gpt2 -n 2 Hi",
        env!("CARGO_BIN_EXE_nexttoken")
    );
    let output = Command::new("bash")
        .args(["-c", &script])
        .env_remove("NEXTTOKEN_MODEL")
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    assert_fails_with(&output, "cannot write to the Hugging Face cache");
    let snapshots = home
        .path()
        .join("hub/models--openai-community--gpt2/snapshots");
    let trusted: Vec<_> = walk(&snapshots)
        .into_iter()
        .filter(|path| path.ends_with("model.safetensors"))
        .collect();
    assert!(trusted.is_empty(), "{trusted:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// The generated ids of each `--json` line.
/// `nexttoken generate --json` of `n` tokens on the tiny trained model, end-of-text ignored,
/// with `args` (flags, then prompts) after.
fn generate_json(n: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let model = tiny_trained();
    let base = ["generate", "-m", &model, "-n", n, "--ignore-eos", "--json"];
    json_lines(&[&base[..], args].concat())
}

/// Each prompt's generated ids from [`generate_json`].
fn ids_of(n: &str, args: &[&str]) -> Vec<Vec<u64>> {
    generate_json(n, args)
        .iter()
        .map(|line| serde_json::from_value(line["ids"].clone()).unwrap())
        .collect()
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

/// `nexttoken serve` as people run it: it says where it listens, answers a completion, and
/// SIGTERM (what `kill`, systemd and container runtimes send) stops it cleanly with status 0.
/// Listening beyond loopback prints a warning.
#[cfg(unix)]
#[test]
fn serve_answers_then_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    for (host, warns) in [("127.0.0.1", false), ("0.0.0.0", true)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
            .args([
                "serve",
                "-m",
                &tiny_trained(),
                "--host",
                host,
                "--port",
                "0",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        let mut warning = String::new();
        stderr.read_line(&mut banner).unwrap();
        let address = banner
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in: {banner}"))
            .replace("0.0.0.0", "127.0.0.1");
        if warns {
            stderr.read_line(&mut warning).unwrap();
            assert!(
                warning.contains("warning: listening on 0.0.0.0"),
                "{warning}"
            );
            assert!(warning.contains("no --api-key"), "{warning}");
        }
        let answer: serde_json::Value = http_post(
            &format!("http://{address}/v1/completions"),
            r#"{"prompt": "Hello", "max_tokens": 4, "temperature": 0}"#,
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "length", "{answer}");

        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        assert!(status.success(), "{status}: {rest}");
        assert!(rest.contains("stopped"), "{rest}");
    }
}

/// A POST with a JSON body over a plain TCP connection (HTTP/1.0: the server closes it).
#[cfg(unix)]
fn http_post(url: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "POST /{path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, json) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {response}"))
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

fn nexttoken_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexttoken"));
    command.args(args).env_remove("NEXTTOKEN_MODEL");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the nexttoken binary runs")
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

/// `--save-logits` writes a file with the mode any new file gets (0666 less the umask), and
/// keeps the mode of a file it replaces, rather than its temporary file's 0600.
#[test]
fn saved_logits_files_get_the_usual_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.safetensors");
    let model = tiny_trained();
    let save = |path: &std::path::Path| {
        let path = path.display().to_string();
        // `sh -c 'umask 022; exec ...'`: the test does not depend on the caller's umask.
        let status = Command::new("sh")
            .arg("-c")
            .arg("umask 022; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_nexttoken"))
            .args([
                "generate",
                "-m",
                &model,
                "-n",
                "2",
                "--save-logits",
                &path,
                "Hi",
            ])
            .env_remove("NEXTTOKEN_MODEL")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    };
    save(&fresh);
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o644);
    let shared = dir.path().join("shared.safetensors");
    std::fs::write(&shared, b"old").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o664)).unwrap();
    save(&shared);
    assert_eq!(mode(&shared), 0o664);
}

/// `NEXTTOKEN_MODEL=` (set but empty) means not set: the built-in model.
#[test]
fn an_empty_model_variable_means_the_built_in_model() {
    let output = nexttoken_with_env(&["generate", "-n", "2", "Hi"], &[("NEXTTOKEN_MODEL", "")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An empty API key would lock every client out: refused before the model loads.
#[test]
fn an_empty_api_key_is_refused_at_start() {
    let output = nexttoken(&["serve", "--port", "0", "--api-key", ""]);
    assert_usage_error(&output, "lock every client out");
    // Set but empty: clap hands the empty value to the same check.
    let output = nexttoken_with_env(&["serve", "--port", "0"], &[("NEXTTOKEN_API_KEY", "")]);
    assert_usage_error(&output, "unset NEXTTOKEN_API_KEY");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# nobody yet\n").unwrap();
    let output = nexttoken(&[
        "serve",
        "--port",
        "0",
        "--api-key-file",
        &keys.display().to_string(),
    ]);
    assert_fails_with(&output, "holds no API key");
}

/// `nexttoken serve` logs one line per request on stderr (JSON with `--log-format json`), and a
/// second Ctrl-C during the shutdown stops it at once, however long the grace.
#[test]
fn serve_logs_requests_and_a_second_ctrl_c_stops_it() {
    use std::io::{BufRead, BufReader, Write};
    let mut server = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args([
            "serve",
            "--port",
            "0",
            "--log-format",
            "json",
            "--shutdown-grace",
            "600",
        ])
        .env_remove("NEXTTOKEN_MODEL")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let address = stderr
        .by_ref()
        .map(Result::unwrap)
        .find_map(|line| {
            let rest = line.split_once("http://")?.1;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .expect("the server says where it listens");
    // A long stream keeps the server busy through the shutdown.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let body = r#"{"prompt": "ROMEO:", "max_tokens": 200, "stream": true, "temperature": 0}"#;
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: cli-test-1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    answer.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // The stream is done quickly on the bundled model; the logged line follows.
    let logged = stderr
        .by_ref()
        .map(Result::unwrap)
        .find(|line| line.contains("cli-test-1"))
        .expect("an access-log line");
    let logged: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(logged["target"], "nexttoken::access");
    assert_eq!(logged["status"], 200);
    assert_eq!(logged["prompt_tokens"], 3);
    assert!(
        logged["completion_tokens"].as_u64().unwrap() > 0,
        "{logged}"
    );
    assert!(logged["ttft_ms"].as_f64().is_some(), "{logged}");

    // A request held open (headers sent, no body yet) keeps the graceful shutdown waiting.
    let mut held = std::net::TcpStream::connect(&address).unwrap();
    write!(
        held,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = server.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        server.try_wait().unwrap().is_none(),
        "stopped before the second Ctrl-C"
    );
    let start = std::time::Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed().as_secs() < 10,
            "a second Ctrl-C did not stop the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    drop(held);
}
