/// Why a token id could not be turned back into text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    /// The id is not in GPT-2's vocabulary (valid ids are `0..50257`).
    #[error(
        "token id {id} is not in the GPT-2 vocabulary (valid ids are 0..{vocab_size}); \
         was the model trained with a larger vocabulary than GPT-2's?"
    )]
    UnknownToken { id: u32, vocab_size: u32 },
}
