use crate::{Gpt2Tokenizer, TokenizerError};

/// Turns ids into text one at a time, holding back the bytes of a character until it is whole.
///
/// GPT-2's tokens are byte sequences: an emoji or a CJK character can be split over two tokens
/// (id 49426 alone is the first bytes of a character). Printing each token's bytes as they come
/// would print broken characters, so the decoder buffers the incomplete tail.
#[derive(Debug)]
pub struct StreamDecoder {
    tokenizer: Gpt2Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub(crate) fn new(tokenizer: Gpt2Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text that is now complete (possibly empty).
    ///
    /// # Errors
    /// [`TokenizerError::UnknownToken`] for an id outside the vocabulary.
    pub fn next_token(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.pending
            .extend_from_slice(&self.tokenizer.decode_bytes(&[id])?);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return Ok(text);
                }
                Err(e) => {
                    let valid_up_to = e.valid_up_to();
                    // The prefix was just checked, so this cannot fail.
                    text.push_str(std::str::from_utf8(&self.pending[..valid_up_to]).unwrap_or(""));
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid_up_to);
                            return Ok(text);
                        }
                        // Bytes that can never become a character: replace them, as `decode` does.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid_up_to + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: whatever is still buffered is an incomplete character, returned as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_all(ids: &[u32]) -> Vec<String> {
        let mut stream = Gpt2Tokenizer::new().stream();
        let mut pieces: Vec<String> = ids
            .iter()
            .map(|&id| stream.next_token(id).unwrap())
            .collect();
        pieces.push(stream.finish());
        pieces
    }

    #[test]
    fn split_character_is_held_until_complete() {
        let tokenizer = Gpt2Tokenizer::new();
        let text = "猫 and 🦀";
        let ids = tokenizer.encode(text);
        let pieces = stream_all(&ids);
        assert_eq!(pieces.concat(), text);
        for piece in &pieces {
            assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{pieces:?}");
        }
        // At least one token of this text ends mid-character, so some step emitted nothing.
        assert!(
            pieces[..ids.len()].iter().any(String::is_empty),
            "{pieces:?}"
        );
    }

    #[test]
    fn token_49426_alone_is_an_incomplete_character() {
        let tokenizer = Gpt2Tokenizer::new();
        let bytes = tokenizer.decode_bytes(&[49426]).unwrap();
        assert!(std::str::from_utf8(&bytes).is_err());
        let mut stream = tokenizer.stream();
        assert_eq!(stream.next_token(49426).unwrap(), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held_forever() {
        // Byte-level id 255 is the lone byte 0xFF, which can never start a character.
        let tokenizer = Gpt2Tokenizer::new();
        let ff = (0..256)
            .find(|&id| tokenizer.decode_bytes(&[id]).unwrap() == [0xFF])
            .unwrap();
        let a = tokenizer.encode("a")[0];
        let mut stream = tokenizer.stream();
        assert_eq!(stream.next_token(ff).unwrap(), "\u{FFFD}");
        assert_eq!(stream.next_token(a).unwrap(), "a");
    }

    #[test]
    fn unknown_id_is_an_error() {
        let mut stream = Gpt2Tokenizer::new().stream();
        assert_eq!(
            stream.next_token(50257),
            Err(TokenizerError::UnknownToken {
                id: 50257,
                vocab_size: 50257
            })
        );
    }
}
