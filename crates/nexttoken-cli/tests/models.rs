//! Where a model comes from: a path, the built-in one, or a Hub name (a fake Hub), and what
//! each failure says.

mod common;

use common::*;

#[test]
fn missing_model() {
    assert_fails_with(
        &nexttoken(&["generate", "--model", "/no/such/dir", "Hi"]),
        "/no/such/dir does not exist",
    );
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
