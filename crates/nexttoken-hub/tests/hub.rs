//! Downloads from a fake Hub on 127.0.0.1 (never the network): the cache layout Python's
//! `huggingface_hub` shares, no network once cached, and every failure a clear error that
//! leaves nothing in the cache a later run would trust.

use std::path::{Path, PathBuf};

use nexttoken_hub::fake::{COMMIT, FakeHub};
use nexttoken_hub::{Hub, HubError, HubOptions};

const REPO: &str = "openai-community/gpt2";
/// An endpoint where nothing listens (the discard port).
const CLOSED_PORT: &str = "http://127.0.0.1:9";

/// A checkpoint folder's files, made up: the hub crate only moves bytes.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", br#"{"model_type": "gpt2"}"#.to_vec()),
        (
            "model.safetensors",
            (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect(),
        ),
    ]
}

fn hub_with(files: &[(&str, Vec<u8>)], repo: &str) -> FakeHub {
    let hub = FakeHub::start();
    for (name, bytes) in files {
        hub.add_file(repo, name, bytes.clone());
    }
    hub
}

fn options(hub: &FakeHub, cache: &Path) -> HubOptions {
    options_at(hub.endpoint(), cache)
}

fn options_at(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        token: None,
        offline: false,
        progress: false,
    }
}

fn download(options: HubOptions, repo: &str) -> Result<PathBuf, HubError> {
    Hub::new(options)?.download(repo, "main")
}

fn assert_holds_the_weights(folder: &Path) {
    let weights = &files()[1].1;
    let found = std::fs::read(folder.join("model.safetensors")).unwrap();
    assert!(
        &found == weights,
        "model.safetensors differs from the Hub's"
    );
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn downloads_into_the_hugging_face_cache_layout_then_runs_offline() {
    let hub = hub_with(&files(), REPO);
    let cache = tempfile::tempdir().unwrap();
    let folder = download(options(&hub, cache.path()), REPO).unwrap();

    let repo_dir = cache.path().join("models--openai-community--gpt2");
    assert_eq!(folder, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    for (name, bytes) in files() {
        let file = folder.join(name);
        assert!(file.is_symlink(), "{name} is not a link into blobs/");
        assert_eq!(std::fs::read(file).unwrap(), bytes, "{name}");
    }
    assert!(tree(&repo_dir).iter().all(|f| !f.ends_with(".part")));

    // A second run asks the network nothing, with or without HF_HUB_OFFLINE.
    let asked = hub.requests();
    assert_eq!(download(options(&hub, cache.path()), REPO).unwrap(), folder);
    let offline = HubOptions {
        offline: true,
        ..options(&hub, cache.path())
    };
    assert_eq!(download(offline, REPO).unwrap(), folder);
    assert_eq!(hub.requests(), asked);
}

/// A cache Python's `huggingface_hub` wrote (refs/main, snapshots/<commit>/ links to blobs/)
/// is used as it is, with no network at all.
#[test]
fn uses_a_cache_that_python_wrote() {
    let cache = tempfile::tempdir().unwrap();
    let repo_dir = cache.path().join("models--gpt2");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for (index, (name, bytes)) in files().into_iter().enumerate() {
        let blob = repo_dir.join("blobs").join(format!("blob{index}"));
        std::fs::write(&blob, bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{index}"), snapshot.join(name))
            .unwrap();
    }
    // Nothing listens there: any request would fail.
    let options = options_at(CLOSED_PORT, cache.path());
    assert_eq!(download(options, "gpt2").unwrap(), snapshot);
}

#[test]
fn a_pinned_commit_resolves_from_the_cache() {
    let hub = hub_with(&files(), REPO);
    let cache = tempfile::tempdir().unwrap();
    let folder = download(options(&hub, cache.path()), REPO).unwrap();
    let asked = hub.requests();
    let again = Hub::new(options(&hub, cache.path()))
        .unwrap()
        .download(REPO, COMMIT)
        .unwrap();
    assert_eq!(again, folder);
    assert_eq!(hub.requests(), asked);
}

#[test]
fn unknown_repo() {
    let hub = hub_with(&files(), REPO);
    let cache = tempfile::tempdir().unwrap();
    let err = download(options(&hub, cache.path()), "nobody/no-such-model").unwrap_err();
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("no model repo `nobody/no-such-model`"),
        "{message}"
    );
    assert!(message.contains("HF_TOKEN"), "{message}");
}

#[test]
fn unknown_revision() {
    let hub = hub_with(&files(), REPO);
    let cache = tempfile::tempdir().unwrap();
    let err = Hub::new(options(&hub, cache.path()))
        .unwrap()
        .download(REPO, "no-such-branch")
        .unwrap_err();
    assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("--revision"), "{err}");
}

#[test]
fn gated_repo_needs_a_token() {
    let hub = hub_with(&files(), REPO);
    hub.gate(REPO, "hf_secret");
    let cache = tempfile::tempdir().unwrap();
    let err = download(options(&hub, cache.path()), REPO).unwrap_err();
    assert!(
        matches!(err, HubError::Gated { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("set HF_TOKEN"), "{err}");

    let with_token = HubOptions {
        token: Some("hf_secret".into()),
        ..options(&hub, cache.path())
    };
    download(with_token, REPO).unwrap();
}

#[test]
fn offline_with_nothing_cached() {
    let hub = hub_with(&files(), REPO);
    let cache = tempfile::tempdir().unwrap();
    let offline = HubOptions {
        offline: true,
        ..options(&hub, cache.path())
    };
    let err = download(offline, REPO).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("hf download openai-community/gpt2"),
        "{err}"
    );
    assert_eq!(hub.requests(), 0);
}

#[test]
fn no_network() {
    let cache = tempfile::tempdir().unwrap();
    let err = download(options_at(CLOSED_PORT, cache.path()), REPO).unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE=1"), "{err}");
}

/// A connection that drops mid-file is resumed from where it stopped, within the same run.
#[test]
fn a_dropped_connection_is_resumed() {
    let hub = hub_with(&files(), REPO);
    hub.break_downloads(2, 100_000);
    let cache = tempfile::tempdir().unwrap();
    let folder = download(options(&hub, cache.path()), REPO).unwrap();
    assert_holds_the_weights(&folder);
}

/// A download that keeps breaking off is a clean error; what arrived stays as a `.part` file
/// that no later run mistakes for the file, and the next run resumes it.
#[test]
fn a_download_that_keeps_failing_resumes_in_the_next_run() {
    let hub = hub_with(&files(), REPO);
    hub.break_downloads(100, 50_000);
    let cache = tempfile::tempdir().unwrap();
    let err = download(options(&hub, cache.path()), REPO).unwrap_err();
    assert!(matches!(err, HubError::Interrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("resumes"), "{err}");
    let repo_dir = cache.path().join("models--openai-community--gpt2");
    assert!(
        !repo_dir.join("snapshots").exists(),
        "{:?}",
        tree(&repo_dir)
    );
    let part = tree(&repo_dir)
        .into_iter()
        .find(|f| f.ends_with(".part"))
        .expect("a partial file");
    let arrived = std::fs::metadata(repo_dir.join(part)).unwrap().len();
    assert!(arrived > 0);

    hub.break_downloads(0, 0);
    let folder = download(options(&hub, cache.path()), REPO).unwrap();
    assert_holds_the_weights(&folder);
}

/// Bytes that do not match the Hub's SHA-256 are removed, never trusted.
#[test]
fn a_damaged_download_is_removed() {
    let hub = hub_with(&files(), REPO);
    hub.damage(REPO, "model.safetensors");
    let cache = tempfile::tempdir().unwrap();
    let err = download(options(&hub, cache.path()), REPO).unwrap_err();
    assert!(matches!(err, HubError::Checksum { .. }), "{err:?}");
    let repo_dir = cache.path().join("models--openai-community--gpt2");
    let left = tree(&repo_dir);
    // Only the ref and lock files remain: no blob, no link in snapshots/.
    assert!(
        left.iter()
            .all(|f| f.starts_with("refs/") || f.ends_with(".lock")),
        "{left:?}"
    );
}

#[test]
fn sharded_checkpoints_download_every_shard() {
    let index = br#"{"metadata": {"total_size": 8}, "weight_map": {
        "wte.weight": "model-00001-of-00002.safetensors",
        "wpe.weight": "model-00002-of-00002.safetensors"}}"#;
    let hub = hub_with(
        &[
            ("config.json", b"{}".to_vec()),
            ("model.safetensors.index.json", index.to_vec()),
            ("model-00001-of-00002.safetensors", vec![1; 10]),
            ("model-00002-of-00002.safetensors", vec![2; 10]),
        ],
        REPO,
    );
    let cache = tempfile::tempdir().unwrap();
    let folder = download(options(&hub, cache.path()), REPO).unwrap();
    for name in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "config.json",
    ] {
        assert!(folder.join(name).is_file(), "{name}");
    }
}

#[test]
fn a_repo_with_only_pytorch_weights_names_the_conversion() {
    let hub = hub_with(
        &[
            ("config.json", b"{}".to_vec()),
            ("pytorch_model.bin", vec![0; 10]),
        ],
        REPO,
    );
    let cache = tempfile::tempdir().unwrap();
    let err = download(options(&hub, cache.path()), REPO).unwrap_err();
    assert!(matches!(err, HubError::PytorchOnly { .. }), "{err:?}");
    // Its existence was asked, the pickle not downloaded.
    let cached = tree(cache.path());
    assert!(
        cached.iter().all(|f| !f.ends_with("pytorch_model.bin")),
        "{cached:?}"
    );
    assert!(
        err.to_string().contains("convert them to safetensors"),
        "{err}"
    );
}

#[test]
fn a_repo_without_weights() {
    let hub = hub_with(&[("config.json", b"{}".to_vec())], REPO);
    let cache = tempfile::tempdir().unwrap();
    let err = download(options(&hub, cache.path()), REPO).unwrap_err();
    assert!(matches!(err, HubError::NoWeights { .. }), "{err:?}");
}
