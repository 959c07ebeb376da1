//! `generate --save-logits`: the logits each id was selected from, and the file written
//! safely.

mod common;

use common::*;

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
