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
    /// Token `id` as GPT-2's `vocab.json` (and a GGUF's `tokenizer.ggml.tokens`) spells it: its
    /// bytes through GPT-2's byte-to-character map (`Ġ` for a space); `None` past the vocabulary.
    pub fn byte_level_token(&self, id: u32) -> Option<String> {
        let bytes = self.decode_bytes(&[id]).ok()?;
        Some(bytes.iter().map(|&b| byte_level_char(b)).collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// A decoder for ids that arrive one at a time.
    pub fn stream(&self) -> StreamDecoder {
        StreamDecoder::new(*self)
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves; the others (controls,
/// space, and a few of Latin-1) take the characters from U+0100 on, in byte order.
fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    if printable(byte) {
        return char::from(byte);
    }
    let index = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(0x100 + index).expect("below U+0200")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As GPT-2's vocab.json spells them.
    #[test]
    fn byte_level_tokens_are_vocab_json_s() {
        let tokenizer = Gpt2Tokenizer::new();
        let spelled = |id| tokenizer.byte_level_token(id);
        assert_eq!(spelled(0).as_deref(), Some("!"));
        assert_eq!(spelled(220).as_deref(), Some("Ġ"));
        assert_eq!(spelled(262).as_deref(), Some("Ġthe"));
        assert_eq!(spelled(198).as_deref(), Some("Ċ"));
        assert_eq!(spelled(50256).as_deref(), Some("<|endoftext|>"));
        assert_eq!(spelled(50257), None);
        // Every byte has its own character.
        let chars: std::collections::BTreeSet<char> = (0..=255u8).map(byte_level_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_level_char(0xad), 'Ń');
    }
}
