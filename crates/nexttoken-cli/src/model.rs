//! `--model`: the built-in model, a local checkpoint (Hugging Face's safetensors or a GGUF
//! file), or a Hugging Face Hub repo, opened as every front end opens it (`nexttoken-load`).

use std::io::IsTerminal;

use anyhow::Result;
use nexttoken_load::OpenedModel;

use crate::args::ModelArgs;

/// Opens the checkpoint `--model` names. `quiet` keeps the download progress bar off (it is
/// drawn only when stderr is a terminal anyway).
pub fn open(args: &ModelArgs, quiet: bool) -> Result<OpenedModel> {
    let progress = !quiet && std::io::stderr().is_terminal();
    Ok(nexttoken_load::open(&args.source(), progress)?)
}
