//! GPT-2's byte-level BPE tokenizer (OpenAI's `r50k_base`, the vocabulary of every GPT-2 size),
//! with a streaming decoder that never emits half a UTF-8 character.
//!
//! ```
//! use nexttoken_tokenizer::Gpt2Tokenizer;
//!
//! let tokenizer = Gpt2Tokenizer::new();
//! let ids = tokenizer.encode("Hello, I am");
//! assert_eq!(ids, [15496, 11, 314, 716]);
//! assert_eq!(tokenizer.decode(&ids)?, "Hello, I am");
//!
//! // Streaming: a token may end inside a character, so text comes out only when it is whole.
//! let mut stream = tokenizer.stream();
//! let mut text = String::new();
//! for &id in &ids {
//!     text += &stream.next_token(id)?;
//! }
//! text += &stream.finish();
//! assert_eq!(text, "Hello, I am");
//! # Ok::<(), nexttoken_tokenizer::TokenizerError>(())
//! ```

mod error;
mod stream;
mod tokenizer;

pub use error::TokenizerError;
pub use stream::StreamDecoder;
pub use tokenizer::{END_OF_TEXT, Gpt2Tokenizer, VOCAB_SIZE};
