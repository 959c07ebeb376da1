//! From a model's name to a [`TextGenerator`], the same way in every front end (the `nexttoken`
//! command, its server and the Python package), so that each gives the same text for the same
//! settings.
//!
//! [`open`] finds the checkpoint a [`ModelSource`] names: the small model built into nexttoken,
//! a local folder or file (Hugging Face's safetensors or a GGUF file), or a Hub repo, downloaded
//! into the Hugging Face cache. It reads sizes and headers only. [`load`] then starts a backend
//! and loads the weights on it in a [`Dtype`], refusing before reading them what the backend
//! cannot run or hold.
//!
//! ```
//! use nexttoken_backend::Backend;
//! use nexttoken_load::{ModelSource, load, open};
//!
//! let mut opened = open(&ModelSource::built_in(), false)?;
//! let (generator, _load_time) = load(Backend::Flex, &mut opened.weights, None)?;
//! assert_eq!(generator.config().n_positions, 256);
//! # Ok::<(), nexttoken_load::LoadError>(())
//! ```

mod error;
mod load;
mod open;

pub use error::LoadError;
pub use load::{Dtype, UnknownDtype, load};
pub use open::{BUILT_IN_NAME, ModelSource, OpenedModel, Weights, open};
