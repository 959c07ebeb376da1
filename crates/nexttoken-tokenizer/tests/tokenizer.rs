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

/// `tests/goldens/tokenizer/corpus.json` (scripts/make_tokenizer_goldens.py): real texts and
/// hand-picked corner cases with the ids Hugging Face's GPT-2 tokenizer gives them.
#[derive(serde::Deserialize)]
struct Corpus {
    format_version: u32,
    cases: Vec<CorpusText>,
}

#[derive(serde::Deserialize)]
struct CorpusText {
    name: String,
    text: String,
    ids: Vec<u32>,
}

/// Every id of about 50,000 tokens of prose, licences, Rust and Python source and corner cases
/// is Hugging Face's, and every text decodes back to itself.
#[test]
fn a_real_corpus_encodes_as_hugging_face_encodes_it() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/goldens/tokenizer/corpus.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let corpus: Corpus = serde_json::from_str(&text).unwrap();
    assert_eq!(corpus.format_version, 1, "run `cargo xtask goldens`");
    assert!(corpus.cases.len() >= 20);
    let tokenizer = Gpt2Tokenizer::new();
    let mut compared = 0;
    for case in &corpus.cases {
        let ours = tokenizer.encode(&case.text);
        if let Some(at) = ours.iter().zip(&case.ids).position(|(a, b)| a != b) {
            panic!(
                "{}: id {at} differs: ours {:?}, Hugging Face's {:?}",
                case.name,
                &ours[at..(at + 8).min(ours.len())],
                &case.ids[at..(at + 8).min(case.ids.len())]
            );
        }
        assert_eq!(ours.len(), case.ids.len(), "{}: number of ids", case.name);
        assert_eq!(
            tokenizer.decode(&ours).unwrap(),
            case.text,
            "{}: decode(encode(text))",
            case.name
        );
        compared += ours.len();
    }
    assert!(compared > 40_000, "{compared} ids");
}
