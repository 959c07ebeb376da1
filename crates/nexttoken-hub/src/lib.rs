//! GPT-2 checkpoints by name from the Hugging Face Hub, as `llama-cli -hf` or candle's examples
//! fetch them.
//!
//! [`Hub::download`] turns a repo id (`gpt2`, `openai-community/gpt2-medium`) into a local
//! folder holding its `config.json` and safetensors weights (one file, or the shards of a
//! `model.safetensors.index.json`), using the [`hf_hub`] crate and the standard Hugging Face
//! cache (`models--org--name/{blobs,snapshots,refs}`), so a model that Python's
//! `huggingface_hub` already downloaded is used without network, and the other way round.
//! Files already in the cache are used without asking the network; downloads resume where a
//! broken one stopped, and a finished download is checked against the Hub's SHA-256 before
//! anything trusts it.
//!
//! The environment is read as `huggingface_hub` reads it ([`HubOptions::from_env`]):
//! `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN` (or the token file `hf auth login`
//! writes) and `HF_HUB_OFFLINE`.
//!
//! ```no_run
//! use nexttoken_hub::{Hub, HubOptions};
//!
//! let hub = Hub::new(HubOptions::from_env()?)?;
//! let folder = hub.download("openai-community/gpt2", "main")?;
//! assert!(folder.join("config.json").exists());
//! # Ok::<(), nexttoken_hub::HubError>(())
//! ```

mod error;
#[cfg(feature = "fake-hub")]
pub mod fake;
mod hub;

pub use error::HubError;
pub use hub::{Hub, HubOptions, is_repo_id};
