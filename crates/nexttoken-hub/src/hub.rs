use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

use nexttoken_layout::{self as layout, CONFIG, INDEX, PYTORCH_WEIGHTS, WEIGHTS};

use crate::HubError;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Tries of a download that broke off, each resuming where the last stopped.
const RETRIES: usize = 3;

/// Where the Hub is and how to talk to it.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The Hub's address (`HF_ENDPOINT`; default `https://huggingface.co`).
    pub endpoint: String,
    /// The cache folder holding `models--org--name/` (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Sent as a bearer token, for gated and private repos (`HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// Use the cache only, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Draw a progress bar on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// Reads the environment as Python's `huggingface_hub` does. The progress bar is off.
    ///
    /// # Errors
    /// [`HubError::NoCacheDir`] when neither `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME` nor
    /// `HOME` says where the cache is.
    pub fn from_env() -> Result<Self, HubError> {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .map(|cache| cache.join("huggingface"))
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|home| home.join("hub")))
            .ok_or(HubError::NoCacheDir)?;
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| hf_home.map(|home| home.join("token")));
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| token_file.and_then(|file| std::fs::read_to_string(file).ok()))
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|value| {
            ["1", "on", "yes", "true"].contains(&value.trim().to_ascii_lowercase().as_str())
        });
        Ok(Self {
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|endpoint| !endpoint.is_empty())
                .map_or_else(
                    || DEFAULT_ENDPOINT.into(),
                    |e| e.trim_end_matches('/').into(),
                ),
            cache_dir,
            token,
            offline,
            progress: false,
        })
    }
}

/// Whether `name` can be a Hub repo id (`name` or `org/name`), as opposed to a path.
pub fn is_repo_id(name: &str) -> bool {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
            && !part.contains("..")
            && !part.contains("--")
    };
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, None) => part_ok(name),
        (Some(org), Some(name), None) => part_ok(org) && part_ok(name),
        _ => false,
    }
}

/// A handle on the Hub and the local cache.
#[derive(Debug)]
pub struct Hub {
    options: HubOptions,
    api: Api,
}

/// What the Hub said about one file.
enum Fetched {
    Found(PathBuf),
    /// The repo exists but has no such file.
    Missing,
}

impl Hub {
    /// # Errors
    /// [`HubError::Protocol`] if the HTTP client cannot be built.
    pub fn new(options: HubOptions) -> Result<Self, HubError> {
        let api = ApiBuilder::from_cache(Cache::new(options.cache_dir.clone()))
            .with_endpoint(options.endpoint.clone())
            .with_token(options.token.clone())
            .with_progress(options.progress)
            .with_retries(RETRIES)
            .with_user_agent("nexttoken", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Protocol {
                endpoint: options.endpoint.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { options, api })
    }

    /// The local folder of `repo_id` at `revision` (a branch, tag or commit) holding its
    /// `config.json` and safetensors weights, downloading what the cache lacks.
    ///
    /// # Errors
    /// A [`HubError`] saying what went wrong and what to do: unknown repo, gated repo, no
    /// safetensors weights, offline with nothing cached, network down, a download that broke
    /// off, a cache that cannot be written, a file that does not match its checksum.
    pub fn download(&self, repo_id: &str, revision: &str) -> Result<PathBuf, HubError> {
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        let weights = match self.fetch(&repo, WEIGHTS)? {
            Fetched::Found(path) => path,
            Fetched::Missing => match self.fetch(&repo, INDEX)? {
                Fetched::Found(index) => {
                    for shard in shard_names(&index)? {
                        if let Fetched::Missing = self.fetch(&repo, &shard)? {
                            return Err(HubError::MissingShard {
                                repo: repo_id.to_string(),
                                shard,
                            });
                        }
                    }
                    index
                }
                Fetched::Missing => return Err(self.no_safetensors(&repo)),
            },
        };
        // Without a config.json the sizes are read off the weights: not an error here.
        self.fetch(&repo, CONFIG)?;
        Ok(weights
            .parent()
            .expect("a cached file lies in its snapshot folder")
            .to_path_buf())
    }

    /// One named file of `repo_id` at `revision` (a GGUF file among a repo's several, as
    /// llama.cpp's `--hf-file` picks one), from the cache or downloaded.
    ///
    /// # Errors
    /// [`HubError::FileNotFound`] if the repo has no such file ([`HubError::NotCached`] when
    /// offline), and [`Hub::download`]'s errors for the rest.
    pub fn download_file(
        &self,
        repo_id: &str,
        revision: &str,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        match self.fetch(&repo, file)? {
            Fetched::Found(path) => Ok(path),
            Fetched::Missing if self.options.offline => Err(HubError::NotCached {
                repo: repo_id.to_string(),
                cache_dir: self.options.cache_dir.clone(),
            }),
            Fetched::Missing => Err(HubError::FileNotFound {
                repo: repo_id.to_string(),
                file: file.to_string(),
            }),
        }
    }

    fn no_safetensors(&self, repo: &Repo) -> HubError {
        let repo_id = repo_id(repo);
        if self.options.offline {
            HubError::NotCached {
                repo: repo_id,
                cache_dir: self.options.cache_dir.clone(),
            }
        } else if self.exists_on_the_hub(repo, PYTORCH_WEIGHTS[0]) {
            HubError::PytorchOnly { repo: repo_id }
        } else {
            HubError::NoWeights { repo: repo_id }
        }
    }

    /// Whether the Hub has `file` in `repo`, asked for its first byte only (a pickle of
    /// gigabytes is not worth downloading to name it in a message).
    fn exists_on_the_hub(&self, repo: &Repo, file: &str) -> bool {
        let url = self.api.repo(repo.clone()).url(file);
        let mut request = ureq::get(&url).set("Range", "bytes=0-0");
        if let Some(token) = &self.options.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        request.call().is_ok()
    }

    /// One file of `repo`: from the cache if it is there, else from the Hub.
    fn fetch(&self, repo: &Repo, file: &str) -> Result<Fetched, HubError> {
        if let Some(path) = self.cached(repo, file) {
            return Ok(Fetched::Found(path));
        }
        if self.options.offline {
            return Ok(Fetched::Missing);
        }
        let downloaded = self.api.repo(repo.clone()).download(file);
        if self.options.progress {
            // hf-hub's bar stays on its line when done: end the line, so that the next bar,
            // or the generated text, starts on a new one.
            eprintln!();
        }
        match downloaded {
            Ok(path) => {
                verify(&path, repo, file)?;
                Ok(Fetched::Found(path))
            }
            Err(error) => match self.classify(error, repo, file) {
                HubError::FileNotFound { .. } => Ok(Fetched::Missing),
                error => Err(error),
            },
        }
    }

    /// `file` in the cache's snapshot of `repo`'s revision, where the revision is a commit or
    /// a ref the cache knows, as `huggingface_hub` lays it out.
    fn cached(&self, repo: &Repo, file: &str) -> Option<PathBuf> {
        let folder = self.options.cache_dir.join(repo.folder_name());
        let revision = repo.revision();
        let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
            revision.to_string()
        } else {
            std::fs::read_to_string(folder.join("refs").join(revision)).ok()?
        };
        let path = folder.join("snapshots").join(commit.trim()).join(file);
        // A dangling link (its blob deleted) is not a cached file.
        path.is_file().then_some(path)
    }

    /// A [`HubError`] for a failed download of `file`.
    fn classify(&self, error: ApiError, repo: &Repo, file: &str) -> HubError {
        let repo_id = repo_id(repo);
        let endpoint = self.options.endpoint.clone();
        match error {
            ApiError::RequestError(error) => match *error {
                ureq::Error::Status(status, response) => {
                    let code = response.header("x-error-code").unwrap_or_default();
                    match (status, code) {
                        (_, "GatedRepo") | (403, _) => HubError::Gated {
                            repo: repo_id,
                            status,
                        },
                        (_, "RevisionNotFound") => HubError::RevisionNotFound {
                            repo: repo_id,
                            revision: repo.revision().to_string(),
                        },
                        (404, "EntryNotFound") => HubError::FileNotFound {
                            repo: repo_id,
                            file: file.to_string(),
                        },
                        // The Hub answers 401 for a repo that does not exist, so as not to
                        // say whether a private one does.
                        (401 | 404, _) => HubError::RepoNotFound {
                            repo: repo_id,
                            endpoint,
                            token: self.options.token.is_some(),
                        },
                        _ => HubError::Protocol {
                            endpoint,
                            reason: format!("{file}: HTTP {status} {}", response.status_text()),
                        },
                    }
                }
                ureq::Error::Transport(transport) => HubError::Network {
                    endpoint,
                    reason: transport.to_string(),
                },
            },
            ApiError::IoError(source) => self.io_error(file, source),
            ApiError::TooManyRetries(inner) => match *inner {
                ApiError::IoError(source) if is_storage_error(&source) => {
                    self.io_error(file, source)
                }
                inner => HubError::Interrupted {
                    file: file.to_string(),
                    reason: inner.to_string(),
                    tries: RETRIES + 1,
                },
            },
            other @ (ApiError::MissingHeader(_)
            | ApiError::InvalidHeader(_)
            | ApiError::ParseIntError(_)) => HubError::Protocol {
                endpoint,
                reason: format!("{file}: {other}"),
            },
            other => HubError::Interrupted {
                file: file.to_string(),
                reason: other.to_string(),
                tries: 1,
            },
        }
    }

    fn io_error(&self, file: &str, source: std::io::Error) -> HubError {
        if is_storage_error(&source) {
            HubError::CacheWrite {
                cache_dir: self.options.cache_dir.clone(),
                error: source,
            }
        } else {
            HubError::Interrupted {
                file: file.to_string(),
                reason: source.to_string(),
                tries: RETRIES + 1,
            }
        }
    }
}

/// The repo's id: what `Repo::url` gives for a model repo (datasets and spaces get a prefix).
fn repo_id(repo: &Repo) -> String {
    repo.url()
}

/// Writing to the cache failed (as opposed to reading from the network).
fn is_storage_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull
            | ErrorKind::FileTooLarge
            | ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::QuotaExceeded
    )
}

/// The shard file names a downloaded `model.safetensors.index.json` lists.
fn shard_names(index: &Path) -> Result<Vec<String>, HubError> {
    let invalid = |reason: String| HubError::InvalidIndex {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| invalid(e.to_string()))?;
    layout::shard_names(&text).map_err(invalid)
}

/// Checks a file just downloaded against its SHA-256, which the Hub gives large (LFS) files as
/// their etag: the blob's name. On a mismatch the blob and its link are removed, so that no later
/// run trusts them.
fn verify(path: &Path, repo: &Repo, file: &str) -> Result<(), HubError> {
    let Some(expected) = std::fs::read_link(path)
        .ok()
        .and_then(|blob| {
            blob.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .filter(|etag| etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit()))
    else {
        return Ok(());
    };
    let found = sha256(path).map_err(|error| HubError::CacheRead {
        path: path.to_path_buf(),
        error,
    })?;
    if found.eq_ignore_ascii_case(&expected) {
        return Ok(());
    }
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
    Err(HubError::Checksum {
        repo: repo_id(repo),
        file: file.to_string(),
        expected,
        found,
    })
}

fn sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths_are_told_apart() {
        for id in [
            "gpt2",
            "openai-community/gpt2-medium",
            "org/model.v2",
            "a_b/c",
        ] {
            assert!(is_repo_id(id), "{id}");
        }
        for path in [
            "",
            "./gpt2",
            "../gpt2",
            "/tmp/gpt2",
            "a/b/c",
            "gpt2/",
            "dir/model.safetensors/",
            "has space",
            "a--b",
            ".hidden",
        ] {
            assert!(!is_repo_id(path), "{path}");
        }
    }

    #[test]
    fn repo_id_reads_back_from_the_repo() {
        let repo = Repo::with_revision("org/name".into(), RepoType::Model, "v1".into());
        assert_eq!(repo_id(&repo), "org/name");
    }
}
