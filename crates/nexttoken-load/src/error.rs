use std::path::PathBuf;

use nexttoken_backend::BackendError;
use nexttoken_generate::GenerateError;
use nexttoken_hub::HubError;
use nexttoken_model::ModelError;

/// Why a model could not be opened or loaded. Each message says what was being done; its
/// [`source`](std::error::Error::source), where there is one, says what went wrong (print the
/// whole chain, as `anyhow`'s `{:#}` does).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the built-in model (this is a bug: please report it)")]
    BuiltIn(#[source] ModelError),
    #[error("--gguf-file {file} names a file in a repo or folder: give it with --model")]
    GgufFileWithoutModel { file: String },
    /// The Hub's settings (its environment variables) or cache folder.
    #[error(transparent)]
    HubSetup(#[from] HubError),
    #[error("no file or folder `{model}` here, so it was looked up on the Hugging Face Hub")]
    Hub {
        model: String,
        #[source]
        error: HubError,
    },
    #[error("loading the model from {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        error: Box<ModelError>,
    },
    #[error(
        "{} has the tokenizer `{kind}`, not GPT-2's byte-level BPE (`gpt2`): nexttoken encodes \
         text with GPT-2's tokenizer only",
        path.display()
    )]
    GgufTokenizerKind { path: PathBuf, kind: String },
    #[error("{} has no tokenizer.ggml.tokens: convert the checkpoint again", path.display())]
    GgufNoTokens { path: PathBuf },
    #[error(
        "{}'s tokenizer differs from GPT-2's at id {id} ({theirs:?} where GPT-2 has {gpt2:?}): \
         nexttoken encodes text with GPT-2's tokenizer only",
        path.display()
    )]
    GgufTokenDiffers {
        path: PathBuf,
        id: usize,
        theirs: Option<String>,
        gpt2: Option<String>,
    },
    #[error(
        "{}'s tokenizer has {tokens} tokens, GPT-2's {tokens} and more (next: {next:?}): \
         nexttoken encodes text with GPT-2's tokenizer only",
        path.display()
    )]
    GgufTokensMissing {
        path: PathBuf,
        tokens: usize,
        next: String,
    },
    #[error(
        "{} is stored as {stored}, and a GGUF file loads as it is stored: leave out --dtype, or \
         make a {asked} file with llama.cpp's llama-quantize",
        path.display()
    )]
    GgufDtype {
        path: PathBuf,
        stored: &'static str,
        asked: &'static str,
    },
    #[error("loading the weights from {files}")]
    Weights {
        files: String,
        #[source]
        error: Box<ModelError>,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
}
