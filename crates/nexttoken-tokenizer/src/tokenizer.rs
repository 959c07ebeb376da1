use tiktoken_rs::CoreBPE;

use crate::{StreamDecoder, TokenizerError};

/// Number of token ids in GPT-2's vocabulary: 50 000 merges, 256 bytes and `<|endoftext|>`.
pub const VOCAB_SIZE: u32 = 50257;

/// The id of `<|endoftext|>`, which GPT-2 uses to separate documents and to stop generating.
pub const END_OF_TEXT: u32 = 50256;

/// GPT-2's tokenizer. Cheap to create and to copy: the vocabulary is built once per process.
#[derive(Clone, Copy)]
pub struct Gpt2Tokenizer {
    bpe: &'static CoreBPE,
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Tokenizer(r50k_base)")
    }
}

impl Gpt2Tokenizer {
    pub fn new() -> Self {
        Self {
            bpe: tiktoken_rs::r50k_base_singleton(),
        }
    }

    /// Encodes text into token ids. The literal text `<|endoftext|>` becomes [`END_OF_TEXT`],
    /// as it does with Hugging Face's GPT-2 tokenizer.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_with_special_tokens(text)
    }

    /// The raw bytes of a sequence of ids. Byte-level BPE can split a character across tokens,
    /// so a slice of ids need not be valid UTF-8.
    ///
    /// # Errors
    /// [`TokenizerError::UnknownToken`] for an id outside the vocabulary.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id >= VOCAB_SIZE) {
            return Err(TokenizerError::UnknownToken {
                id,
                vocab_size: VOCAB_SIZE,
            });
        }
        // Every id below VOCAB_SIZE is in r50k_base, so the lookup cannot fail here; map it all
        // the same rather than trusting that.
        self.bpe
            .decode_bytes(ids)
            .map_err(|e| TokenizerError::UnknownToken {
                id: e.token,
                vocab_size: VOCAB_SIZE,
            })
    }

    /// Decodes ids into text. Bytes that are not valid UTF-8 become U+FFFD, as with Hugging
    /// Face's `decode` (`errors="replace"`).
    ///
    /// # Errors
    /// [`TokenizerError::UnknownToken`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// A decoder for ids that arrive one at a time.
    pub fn stream(&self) -> StreamDecoder {
        StreamDecoder::new(*self)
    }
}
