use std::path::PathBuf;

/// Why a checkpoint could not be had from the Hub. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "no Hugging Face cache folder: HOME is not set; set HF_HOME (or HF_HUB_CACHE) to a \
         folder for downloaded models"
    )]
    NoCacheDir,

    #[error(
        "no model repo `{repo}` on {endpoint}{}: check the name (e.g. `gpt2`, \
         `openai-community/gpt2-medium`), or pass a local folder",
        if *.token { "" } else { " (if it is private, set HF_TOKEN to a token that can read it)" }
    )]
    RepoNotFound {
        repo: String,
        endpoint: String,
        token: bool,
    },

    #[error(
        "`{repo}` is gated or private (HTTP {status}): accept its terms on the Hub, then set \
         HF_TOKEN to a token with access (or run `hf auth login`)"
    )]
    Gated { repo: String, status: u16 },

    #[error("`{repo}` has no revision `{revision}`: check --revision (a branch, tag or commit)")]
    RevisionNotFound { repo: String, revision: String },

    #[error("`{repo}` has no file {file}")]
    FileNotFound { repo: String, file: String },

    #[error(
        "`{repo}` has only PyTorch pickle weights (pytorch_model.bin), which nexttoken does not \
         read: convert them to safetensors (in Python: `GPT2LMHeadModel.from_pretrained(\"{repo}\")\
         .save_pretrained(dir)`) and pass that folder with --model"
    )]
    PytorchOnly { repo: String },

    #[error(
        "`{repo}` has no model.safetensors nor model.safetensors.index.json: is it a GPT-2 \
         model repo?"
    )]
    NoWeights { repo: String },

    #[error("`{repo}`'s model.safetensors.index.json lists {shard}, which the repo lacks")]
    MissingShard { repo: String, shard: String },

    #[error("{path} is not a usable model.safetensors.index.json: {reason}")]
    InvalidIndex { path: PathBuf, reason: String },

    #[error(
        "HF_HUB_OFFLINE is set and `{repo}` is not in the cache {}: run once with a network, \
         or download it with `hf download {repo}`",
        cache_dir.display()
    )]
    NotCached { repo: String, cache_dir: PathBuf },

    #[error(
        "cannot reach {endpoint}: {reason}. Check the network (or HF_ENDPOINT, or a proxy); \
         a model already downloaded runs offline with HF_HUB_OFFLINE=1"
    )]
    Network { endpoint: String, reason: String },

    #[error(
        "the download of {file} broke off ({reason}) after {tries} tries; what arrived is kept \
         as a partial file in the cache, and running the command again resumes it"
    )]
    Interrupted {
        file: String,
        reason: String,
        tries: usize,
    },

    #[error(
        "cannot write to the Hugging Face cache {}: {error}. Free some space, or set \
         HF_HUB_CACHE to a folder on a disk with room",
        cache_dir.display()
    )]
    CacheWrite {
        cache_dir: PathBuf,
        // Not `source`: the message already says it, and error chains would say it twice.
        error: std::io::Error,
    },

    #[error("cannot read {}: {error}", path.display())]
    CacheRead {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(
        "{file} from `{repo}` does not match its SHA-256 (expected {expected}, got {found}); \
         the damaged file was removed from the cache: run the command again"
    )]
    Checksum {
        repo: String,
        file: String,
        expected: String,
        found: String,
    },

    #[error("unexpected answer from {endpoint} ({reason}): is HF_ENDPOINT a Hugging Face Hub?")]
    Protocol { endpoint: String, reason: String },
}
