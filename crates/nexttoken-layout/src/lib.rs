//! The files of a Hugging Face checkpoint folder, for the model crate's `Checkpoint` and for
//! code that fetches them (the Hub client), which need not know anything else of the model.

use std::collections::{BTreeMap, BTreeSet};

/// The model's hyper-parameters.
pub const CONFIG: &str = "config.json";
/// The weights in one file.
pub const WEIGHTS: &str = "model.safetensors";
/// The weights in shards: a map from tensor name to shard file.
pub const INDEX: &str = "model.safetensors.index.json";
/// What older repos ship instead of safetensors: pickles, which nexttoken does not read.
pub const PYTORCH_WEIGHTS: [&str; 2] = ["pytorch_model.bin", "pytorch_model.bin.index.json"];

/// The shard files a `model.safetensors.index.json` lists, each once, in name order (which is
/// shard order: `model-00001-of-00003.safetensors`, ...).
///
/// # Errors
/// Why the text is not a usable index: not JSON, no `weight_map`, no files, or a shard name that
/// is a path rather than a file name beside the index.
pub fn shard_names(index_json: &str) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(index_json).map_err(|e| e.to_string())?;
    let names: BTreeSet<String> = index.weight_map.into_values().collect();
    if names.is_empty() {
        return Err("its weight_map lists no files".into());
    }
    if let Some(name) = names
        .iter()
        .find(|name| name.contains(['/', '\\']) || *name == "." || *name == "..")
    {
        return Err(format!("shard \"{name}\" is not a file name"));
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_listed_once_in_order() {
        let index = r#"{"metadata": {"total_size": 8}, "weight_map": {
            "wte.weight": "model-00002-of-00002.safetensors",
            "wpe.weight": "model-00001-of-00002.safetensors",
            "ln_f.bias": "model-00002-of-00002.safetensors"}}"#;
        assert_eq!(
            shard_names(index).unwrap(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }

    #[test]
    fn unusable_indexes_say_why() {
        for (index, reason) in [
            ("{", "EOF"),
            (r#"{"weight_map": {}}"#, "lists no files"),
            (
                r#"{"weight_map": {"a": "../x.safetensors"}}"#,
                "not a file name",
            ),
            (r#"{"metadata": {}}"#, "weight_map"),
        ] {
            let err = shard_names(index).unwrap_err();
            assert!(err.contains(reason), "{index}: {err}");
        }
    }
}
