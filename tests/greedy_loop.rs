//! `examples/greedy_loop.rs`, the loop as a reader first meets it, gives the ids the product's
//! loop gives (`generate`: batched, with a KV cache), on the bundled model, past its context.

#[path = "../examples/greedy_loop.rs"]
#[allow(dead_code)] // its `main` is the example's, not the test's
mod greedy_loop;

use std::ops::ControlFlow;

use burn::tensor::Device;
use nexttoken::generate::{GenerationConfig, generate};
use nexttoken::model::Checkpoint;
use nexttoken::tokenizer::Gpt2Tokenizer;

#[test]
fn the_example_loop_gives_the_products_ids() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/nexttoken-tiny-shakespeare"
    );
    let mut checkpoint = Checkpoint::open(path).expect("the bundled model");
    let config = checkpoint.config().clone();
    let model = checkpoint
        .load(&Device::flex())
        .expect("the bundled model loads");
    let prompt = Gpt2Tokenizer::new().encode("ROMEO:\nBut soft, what light");
    // Past the context: both loops must crop the window the same way.
    let new_tokens = config.n_positions + 8 - prompt.len();
    let ours = greedy_loop::greedy(&model, &prompt, new_tokens, config.eos_token_id);
    let settings = GenerationConfig {
        eos_token_id: Some(config.eos_token_id),
        ..GenerationConfig::new(new_tokens)
    };
    let product = generate(&model, std::slice::from_ref(&prompt), &settings, |_| {
        ControlFlow::Continue(())
    });
    let mut new_ids = product.expect("generates").tokens.remove(0);
    // The product keeps the end-of-text id it stopped at; the example stops before it.
    if new_ids.last() == Some(&config.eos_token_id) {
        new_ids.pop();
    }
    let product: Vec<u32> = prompt.iter().chain(&new_ids).copied().collect();
    assert!(
        ours.len() > prompt.len() + 8,
        "the example made {} ids",
        ours.len()
    );
    assert_eq!(ours, product);
}
