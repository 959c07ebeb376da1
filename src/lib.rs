//! nexttoken: GPT-2 text generation in Rust on any burn backend.
//!
//! This crate gathers the workspace's parts under one name:
//! - [`model`]: the GPT-2 architecture and Hugging Face checkpoint loading;
//! - [`hub`]: checkpoints by name from the Hugging Face Hub, in its standard cache;
//! - [`tokenizer`]: GPT-2's BPE tokenizer with a streaming decoder;
//! - [`generate`]: the decode-select-append loop and its timings;
//! - [`backend`]: the burn backends compiled in, and a device for each.
//!
//! The `nexttoken` binary (crate `nexttoken-cli`) is the command-line front end.

pub use nexttoken_backend as backend;
pub use nexttoken_generate as generate;
pub use nexttoken_hub as hub;
pub use nexttoken_model as model;
pub use nexttoken_tokenizer as tokenizer;
