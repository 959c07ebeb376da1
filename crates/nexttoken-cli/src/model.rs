//! `--model`: the built-in model, a local checkpoint, or a Hugging Face Hub repo.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use nexttoken_hub::{Hub, HubOptions, is_repo_id};
use nexttoken_model::Checkpoint;

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
    pub checkpoint: Checkpoint,
    pub name: String,
}

/// Opens the checkpoint `--model` names: reads its config and headers, downloading it first
/// if it is a Hub repo not in the cache. `quiet` keeps the download progress bar off (it is
/// drawn only when stderr is a terminal anyway).
pub fn open(args: &ModelArgs, quiet: bool) -> Result<OpenedModel> {
    // `NEXTTOKEN_MODEL=` (set but empty) means not set, as an empty variable does to most tools.
    let Some(model) = args.model.as_deref().filter(|model| !model.is_empty()) else {
        let checkpoint =
            Checkpoint::from_bytes(BUILT_IN_NAME, BUILT_IN_WEIGHTS.to_vec(), BUILT_IN_CONFIG)
                .context("loading the built-in model (this is a bug: please report it)")?;
        return Ok(OpenedModel {
            checkpoint,
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
        Hub::new(options)?
            .download(model, &args.revision)
            .with_context(|| {
                format!(
                    "no file or folder `{model}` here, so it was looked up on the Hugging Face Hub"
                )
            })?
    } else {
        path.to_path_buf()
    };
    let checkpoint = Checkpoint::open(&folder)
        .with_context(|| format!("loading the model from {}", folder.display()))?;
    let name = if from_hub {
        model.to_string()
    } else {
        path_name(path)
    };
    Ok(OpenedModel { checkpoint, name })
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
