use std::path::PathBuf;

/// Why a GGUF file could not be read. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a GGUF file (it starts with {magic:?}, not \"GGUF\"): pass a .gguf file \
         as llama.cpp's converter writes it, or a folder with model.safetensors"
    )]
    NotGguf { path: PathBuf, magic: [u8; 4] },
    #[error(
        "{path} is GGUF version {version}; nexttoken reads versions 2 and 3 (convert it again with \
         llama.cpp's convert_hf_to_gguf.py)"
    )]
    Version { path: PathBuf, version: u32 },
    #[error(
        "{path} is truncated or corrupt: {what} runs past the end of the file ({len} bytes); \
         download or convert it again"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        len: usize,
    },
    #[error("{path} is corrupt: {what}; download or convert it again")]
    Corrupt { path: PathBuf, what: String },
}
