//! Which checkpoint a name means, opened: the built-in model, a local checkpoint (Hugging
//! Face's safetensors or a GGUF file), or a Hugging Face Hub repo.

use std::path::{Path, PathBuf};

use nexttoken_hub::{Hub, HubOptions, is_repo_id};
use nexttoken_model::burn::tensor::DType;
use nexttoken_model::{Checkpoint, GgufCheckpoint, Gpt2Config};
use nexttoken_tokenizer::Gpt2Tokenizer;

use crate::LoadError;

/// The model built into nexttoken (models/README.md): 29 MB of weights, so that every front
/// end works from any directory, installed or not, with no download.
pub const BUILT_IN_NAME: &str = "nexttoken-tiny-shakespeare";
const BUILT_IN_WEIGHTS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/nexttoken-tiny-shakespeare/model.safetensors"
));
const BUILT_IN_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/nexttoken-tiny-shakespeare/config.json"
));

/// Where a model comes from, as the CLI's `--model`, `--revision` and `--gguf-file` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// A local folder or file, or a Hub repo id (a local path wins over a repo id of the same
    /// name); `None` or empty for the built-in model.
    pub model: Option<String>,
    /// The Hub revision of a repo id: a branch, tag or commit.
    pub revision: String,
    /// A GGUF file in the repo or folder `model` names.
    pub gguf_file: Option<String>,
}

impl ModelSource {
    /// The model built into nexttoken.
    pub fn built_in() -> Self {
        Self::named(None)
    }

    /// `model` at the Hub's `main` revision, or the built-in model for `None`.
    pub fn named(model: Option<String>) -> Self {
        Self {
            model,
            revision: "main".into(),
            gguf_file: None,
        }
    }
}

/// An opened checkpoint and the name to show for it.
pub struct OpenedModel {
    pub weights: Weights,
    pub name: String,
}

/// A checkpoint in either format, opened (sizes and headers read, no weights yet).
pub enum Weights {
    Safetensors(Checkpoint),
    Gguf(GgufCheckpoint),
}

impl Weights {
    pub fn config(&self) -> &Gpt2Config {
        match self {
            Weights::Safetensors(checkpoint) => checkpoint.config(),
            Weights::Gguf(gguf) => gguf.config(),
        }
    }

    /// The float type the weights are stored in (float32 for quantized GGUF matrices).
    pub fn dtype(&self) -> DType {
        match self {
            Weights::Safetensors(checkpoint) => checkpoint.dtype(),
            Weights::Gguf(gguf) => gguf.dtype(),
        }
    }

    /// The files the weights come from, for messages.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Weights::Safetensors(checkpoint) => checkpoint.files().map(Path::to_path_buf).collect(),
            Weights::Gguf(gguf) => vec![gguf.path().to_path_buf()],
        }
    }
}

/// Opens the checkpoint `source` names: reads its config and headers, downloading it first if
/// it is a Hub repo not in the cache (with a progress bar on stderr if `progress`).
///
/// # Errors
/// A [`LoadError`] naming what is missing or wrong and where.
pub fn open(source: &ModelSource, progress: bool) -> Result<OpenedModel, LoadError> {
    // `NEXTTOKEN_MODEL=` (set but empty) means not set, as an empty variable does to most tools.
    let Some(model) = source.model.as_deref().filter(|model| !model.is_empty()) else {
        if let Some(file) = &source.gguf_file {
            return Err(LoadError::GgufFileWithoutModel { file: file.clone() });
        }
        let checkpoint =
            Checkpoint::from_bytes(BUILT_IN_NAME, BUILT_IN_WEIGHTS.to_vec(), BUILT_IN_CONFIG)
                .map_err(LoadError::BuiltIn)?;
        return Ok(OpenedModel {
            weights: Weights::Safetensors(checkpoint),
            name: BUILT_IN_NAME.into(),
        });
    };
    let path = Path::new(model);
    let from_hub = !path.exists() && is_repo_id(model);
    let folder = if from_hub {
        let options = HubOptions {
            progress,
            ..HubOptions::from_env()?
        };
        let hub = Hub::new(options)?;
        match &source.gguf_file {
            Some(file) => hub.download_file(model, &source.revision, file),
            None => hub.download(model, &source.revision),
        }
        .map_err(|error| LoadError::Hub {
            model: model.to_string(),
            error,
        })?
    } else if let Some(file) = &source.gguf_file {
        path.join(file)
    } else {
        path.to_path_buf()
    };
    let opening = |error| LoadError::Open {
        path: folder.clone(),
        error: Box::new(error),
    };
    let weights = if is_gguf(&folder) {
        let gguf = GgufCheckpoint::open(&folder).map_err(opening)?;
        check_gguf_tokenizer(&gguf)?;
        Weights::Gguf(gguf)
    } else {
        Weights::Safetensors(Checkpoint::open(&folder).map_err(opening)?)
    };
    let name = match (&source.gguf_file, from_hub) {
        (Some(file), _) => format!("{model}/{file}"),
        (None, true) => model.to_string(),
        (None, false) => path_name(path),
    };
    Ok(OpenedModel { weights, name })
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("gguf"))
}

/// A GGUF file carries its tokenizer; nexttoken encodes with GPT-2's, so the file's must be
/// the same vocabulary, token for token.
fn check_gguf_tokenizer(gguf: &GgufCheckpoint) -> Result<(), LoadError> {
    let path = gguf.path().to_path_buf();
    let file = gguf.gguf();
    let metadata = |key: &str| file.metadata(key);
    let model = metadata("tokenizer.ggml.model").and_then(|v| v.as_str());
    if model != Some("gpt2") {
        return Err(LoadError::GgufTokenizerKind {
            path,
            kind: model.unwrap_or("(none)").to_string(),
        });
    }
    let Some(tokens) = metadata("tokenizer.ggml.tokens").and_then(|v| v.as_array()) else {
        return Err(LoadError::GgufNoTokens { path });
    };
    let tokenizer = Gpt2Tokenizer::new();
    let mut ours = (0u32..)
        .map_while(|id| tokenizer.byte_level_token(id))
        .fuse();
    for (id, theirs) in tokens.iter().enumerate() {
        let theirs = theirs.as_str().map(str::to_string);
        let gpt2 = ours.next();
        if theirs != gpt2 {
            return Err(LoadError::GgufTokenDiffers {
                path,
                id,
                theirs,
                gpt2,
            });
        }
    }
    if let Some(next) = ours.next() {
        return Err(LoadError::GgufTokensMissing {
            path,
            tokens: tokens.len(),
            next,
        });
    }
    Ok(())
}

/// A short name for tables: a path's last component (its folder's, for a model.safetensors).
fn path_name(path: &Path) -> String {
    let path = if path.ends_with("model.safetensors") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}
