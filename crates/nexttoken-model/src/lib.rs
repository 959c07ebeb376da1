//! GPT-2 on [burn], written once for every backend.
//!
//! The architecture follows Hugging Face's `modeling_gpt2.py` and its field names follow the
//! checkpoint's keys (`wte`, `wpe`, `h.{i}.attn.c_attn`, ...), so a Hugging Face
//! `model.safetensors` loads with a handful of key renames. The code never names a backend: the
//! [`Device`](burn::tensor::Device) the model is created on decides where it runs.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use nexttoken_model::Gpt2Config;
//!
//! let device = Device::flex();
//! let config = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, vocab_size: 32, ..Gpt2Config::gpt2() };
//! let model = config.init(&device);
//! let ids = Tensor::<2, Int>::from_data([[1, 2, 3], [4, 5, 6]], &device);
//! let logits = model.forward(ids);
//! assert_eq!(logits.dims(), [2, 3, 32]);
//! ```
//!
//! Loading a Hugging Face checkpoint (a directory with `config.json` and `model.safetensors`, or
//! a sharded `model.safetensors.index.json`): [`Checkpoint::open`] reads the config and the
//! headers, [`Checkpoint::load`] the weights.
//!
//! ```no_run
//! # use burn::tensor::Device;
//! let model = nexttoken_model::Checkpoint::open("path/to/gpt2")?.load(&Device::flex())?;
//! # Ok::<(), nexttoken_model::ModelError>(())
//! ```

pub use burn;

mod attention;
mod block;
mod cache;
mod checkpoint;
mod config;
mod error;
mod flex;
mod gguf;
mod linear;
mod mlp;
mod model;
mod quantized;
mod seeded;

pub use cache::{BLOCK_SIZE, CacheRow, KvCache};
pub use checkpoint::Checkpoint;
pub use config::Gpt2Config;
pub use error::ModelError;
pub use flex::softmax;
pub use gguf::GgufCheckpoint;
pub use linear::{Embedding, Linear, QuantizedWeight};
pub use model::{Chunk, Gpt2, token_tensor};
pub use nexttoken_layout as layout;
pub use quantized::Quantization;
