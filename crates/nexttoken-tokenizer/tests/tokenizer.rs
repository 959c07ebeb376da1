//! Known GPT-2 encodings, checked against ids that Hugging Face's GPT-2 tokenizer gives.

use nexttoken_tokenizer::{END_OF_TEXT, Gpt2Tokenizer, TokenizerError};

#[test]
fn known_encodings() {
    let tokenizer = Gpt2Tokenizer::new();
    assert_eq!(tokenizer.encode("Hello, I am"), [15496, 11, 314, 716]);
    assert_eq!(
        tokenizer.encode("Every effort moves you"),
        [6109, 3626, 6100, 345]
    );
    assert_eq!(tokenizer.encode(" the"), [262]);
    assert_eq!(tokenizer.encode(""), Vec::<u32>::new());
}

#[test]
fn end_of_text_literal_is_one_special_token() {
    let tokenizer = Gpt2Tokenizer::new();
    assert_eq!(tokenizer.encode("<|endoftext|>"), [END_OF_TEXT]);
    assert_eq!(
        tokenizer.encode("Hi<|endoftext|>Hi"),
        [17250, END_OF_TEXT, 17250]
    );
    assert_eq!(tokenizer.decode(&[END_OF_TEXT]).unwrap(), "<|endoftext|>");
}

#[test]
fn unicode_round_trips() {
    let tokenizer = Gpt2Tokenizer::new();
    for text in [
        "naïve café",
        "日本語のテキスト",
        "emoji 🦀🚀 and 👩‍👩‍👧",
        "  leading spaces\n\ttabs\r\n",
        "Здравствуй, мир",
    ] {
        let ids = tokenizer.encode(text);
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let err = Gpt2Tokenizer::new().decode(&[15496, 60000]).unwrap_err();
    assert_eq!(
        err,
        TokenizerError::UnknownToken {
            id: 60000,
            vocab_size: 50257
        }
    );
    assert!(err.to_string().contains("60000"));
}
