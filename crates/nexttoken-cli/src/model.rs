//! `--model`: the built-in model, a local checkpoint (Hugging Face's safetensors or a GGUF
//! file), or a Hugging Face Hub repo.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nexttoken_hub::{Hub, HubOptions, is_repo_id};
use nexttoken_model::burn::tensor::DType;
use nexttoken_model::{Checkpoint, GgufCheckpoint, Gpt2Config};
use nexttoken_tokenizer::Gpt2Tokenizer;

use crate::args::ModelArgs;

/// The model built into the binary (models/README.md): 29 MB of weights, so that
/// `nexttoken generate "..."` works from any directory, installed or not, with no download.
const BUILT_IN_NAME: &str = "nexttoken-tiny-shakespeare";
const BUILT_IN_WEIGHTS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/nexttoken-tiny-shakespeare/model.safetensors"
));
const BUILT_IN_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/nexttoken-tiny-shakespeare/config.json"
));

/// An opened checkpoint and the name to show for it.
pub struct OpenedModel {
    pub checkpoint: Weights,
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

/// Opens the checkpoint `--model` names: reads its config and headers, downloading it first
/// if it is a Hub repo not in the cache. `quiet` keeps the download progress bar off (it is
/// drawn only when stderr is a terminal anyway).
pub fn open(args: &ModelArgs, quiet: bool) -> Result<OpenedModel> {
    // `NEXTTOKEN_MODEL=` (set but empty) means not set, as an empty variable does to most tools.
    let Some(model) = args.model.as_deref().filter(|model| !model.is_empty()) else {
        if let Some(file) = &args.gguf_file {
            bail!("--gguf-file {file} names a file in a repo or folder: give it with --model");
        }
        let checkpoint =
            Checkpoint::from_bytes(BUILT_IN_NAME, BUILT_IN_WEIGHTS.to_vec(), BUILT_IN_CONFIG)
                .context("loading the built-in model (this is a bug: please report it)")?;
        return Ok(OpenedModel {
            checkpoint: Weights::Safetensors(checkpoint),
            name: BUILT_IN_NAME.into(),
        });
    };
    let path = Path::new(model);
    let from_hub = !path.exists() && is_repo_id(model);
    let folder = if from_hub {
        let options = HubOptions {
            progress: !quiet && std::io::stderr().is_terminal(),
            ..HubOptions::from_env()?
        };
        let hub = Hub::new(options)?;
        match &args.gguf_file {
            Some(file) => hub.download_file(model, &args.revision, file),
            None => hub.download(model, &args.revision),
        }
        .with_context(|| {
            format!("no file or folder `{model}` here, so it was looked up on the Hugging Face Hub")
        })?
    } else if let Some(file) = &args.gguf_file {
        path.join(file)
    } else {
        path.to_path_buf()
    };
    let checkpoint = if is_gguf(&folder) {
        let gguf = GgufCheckpoint::open(&folder)
            .with_context(|| format!("loading the model from {}", folder.display()))?;
        check_gguf_tokenizer(&gguf)?;
        Weights::Gguf(gguf)
    } else {
        Weights::Safetensors(
            Checkpoint::open(&folder)
                .with_context(|| format!("loading the model from {}", folder.display()))?,
        )
    };
    let name = match (&args.gguf_file, from_hub) {
        (Some(file), _) => format!("{model}/{file}"),
        (None, true) => model.to_string(),
        (None, false) => path_name(path),
    };
    Ok(OpenedModel { checkpoint, name })
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("gguf"))
}

/// A GGUF file carries its tokenizer; nexttoken encodes with GPT-2's, so the file's must be
/// the same vocabulary, token for token.
fn check_gguf_tokenizer(gguf: &GgufCheckpoint) -> Result<()> {
    let path = gguf.path().display();
    let file = gguf.gguf();
    let metadata = |key: &str| file.metadata(key);
    let model = metadata("tokenizer.ggml.model").and_then(|v| v.as_str());
    if model != Some("gpt2") {
        bail!(
            "{path} has the tokenizer `{}`, not GPT-2's byte-level BPE (`gpt2`): nexttoken \
             encodes text with GPT-2's tokenizer only",
            model.unwrap_or("(none)")
        );
    }
    let Some(tokens) = metadata("tokenizer.ggml.tokens").and_then(|v| v.as_array()) else {
        bail!("{path} has no tokenizer.ggml.tokens: convert the checkpoint again");
    };
    let tokenizer = Gpt2Tokenizer::new();
    let ours = (0u32..).map_while(|id| tokenizer.byte_level_token(id));
    let mut ours = ours.fuse();
    for (id, theirs) in tokens.iter().enumerate() {
        let theirs = theirs.as_str();
        let mine = ours.next();
        if theirs != mine.as_deref() {
            bail!(
                "{path}'s tokenizer differs from GPT-2's at id {id} ({theirs:?} where GPT-2 has \
                 {mine:?}): nexttoken encodes text with GPT-2's tokenizer only"
            );
        }
    }
    if let Some(next) = ours.next() {
        bail!(
            "{path}'s tokenizer has {} tokens, GPT-2's {} and more (next: {next:?}): nexttoken \
             encodes text with GPT-2's tokenizer only",
            tokens.len(),
            tokens.len()
        );
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
