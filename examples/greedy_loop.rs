//! The generation loop itself, on the public API: encode, run the model, take the last
//! position's logits, softmax, argmax, append, repeat, decode. `nexttoken generate` runs the same
//! loop batched, with a KV cache and streaming; `tests/greedy_loop.rs` holds the two to the same
//! ids.
//!
//! ```text
//! cargo run --release --example greedy_loop                            # the bundled model
//! cargo run --release --example greedy_loop -- path/to/gpt2 "Hello, I am"
//! ```

use std::path::Path;

use burn::tensor::Device;
use nexttoken::model::{Checkpoint, Gpt2, softmax, token_tensor};
use nexttoken::tokenizer::Gpt2Tokenizer;

/// The ids `prompt` continues with, greedily, until `end_of_text` or `max_new_tokens`.
pub fn greedy(model: &Gpt2, prompt: &[u32], max_new_tokens: usize, end_of_text: u32) -> Vec<u32> {
    let device = Device::flex();
    let mut ids = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let window = &ids[ids.len().saturating_sub(model.context_length())..]; // crop to the context
        let logits = model.forward(token_tensor(&[window], &device)); // [1, tokens, vocab]
        let [_, tokens, vocab] = logits.dims();
        let last = logits
            .slice([0..1, tokens - 1..tokens, 0..vocab])
            .reshape([1, vocab]);
        let probabilities = softmax(last); // [1, vocab]
        let next = probabilities.argmax(1).into_scalar::<i64>() as u32;
        if next == end_of_text {
            break;
        }
        ids.push(next);
    }
    ids
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nexttoken-tiny-shakespeare");
    let model = args.next().map_or(bundled, Into::into);
    let prompt = args
        .next()
        .unwrap_or_else(|| "Every effort moves you".into());

    let mut checkpoint = Checkpoint::open(&model)?;
    let end_of_text = checkpoint.config().eos_token_id;
    let model = checkpoint.load(&Device::flex())?;
    let tokenizer = Gpt2Tokenizer::new();
    let ids = greedy(&model, &tokenizer.encode(&prompt), 40, end_of_text);
    println!("{}", tokenizer.decode(&ids)?);
    Ok(())
}
