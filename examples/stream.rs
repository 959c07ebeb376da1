//! Loading a checkpoint, sampling and streaming text from Rust: what `nexttoken generate` does,
//! in a page of library calls.
//!
//! ```text
//! cargo run --release --example stream                       # the bundled model
//! cargo run --release --example stream -- path/to/gpt2      # a Hugging Face checkpoint folder
//! cargo run --release --example stream -- openai-community/gpt2 "Hello, I am"
//! ```
//!
//! Two prompts of different lengths run as one batch: the first is sampled (temperature 0.8,
//! top-p 0.95, a fixed seed, stopping at a blank line), the second greedy. The first streams as
//! it is made; the second is cancelled after its first 40 characters, as a server cancels a
//! request whose client went away.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use nexttoken::generate::{GenerationConfig, SamplingParams, Selection, TextGenerator};
use nexttoken::hub::{Hub, HubOptions};
use nexttoken::model::Checkpoint;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| {
        let bundled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nexttoken-tiny-shakespeare");
        bundled.display().to_string()
    });
    let prompt = args
        .next()
        .unwrap_or_else(|| "ROMEO:\nBut soft".to_string());

    // A folder or file on disk, or else a Hub repo id (downloaded into the Hugging Face cache).
    let path = if Path::new(&model).exists() {
        PathBuf::from(&model)
    } else {
        Hub::new(HubOptions::from_env()?)?.download(&model, "main")?
    };
    let mut checkpoint = Checkpoint::open(&path)?;
    let config = checkpoint.config().clone();
    let generator = TextGenerator::new(checkpoint.load(&Device::flex())?, config)?;

    let sampled = GenerationConfig {
        selection: Selection::Sample(SamplingParams {
            temperature: 0.8,
            top_p: Some(0.95),
            ..SamplingParams::default()
        }),
        seed: 7,
        ..generator.generation_config(60)
    };
    let mut session = generator.session();
    let streamed = session.add(&prompt, &sampled, &["\n\n".to_string()])?;
    let cancelled = session.add("JULIET:", &generator.generation_config(60), &[])?;

    print!("{prompt}");
    let mut other = String::new();
    let mut chunks = session.chunks();
    while let Some(chunk) = chunks.next() {
        let chunk = chunk?;
        if chunk.row == streamed {
            print!("{}", chunk.text);
            std::io::stdout().flush()?;
            if let Some(reason) = chunk.finish {
                println!("\n[finished: {}]", reason.as_str());
            }
        } else {
            other.push_str(&chunk.text);
            if other.chars().count() >= 40 {
                chunks.cancel(cancelled);
            }
        }
    }
    println!(
        "\nJULIET:{other}\n[cancelled after {} characters]",
        other.chars().count()
    );
    let stats = session.stats();
    eprintln!(
        "prompt: {} tokens at {:.1} tokens/s; generated: {} tokens at {:.1} tokens/s",
        stats.prompt_tokens,
        stats.prompt_tokens_per_s(),
        stats.decode_tokens,
        stats.generated_tokens_per_s()
    );
    Ok(())
}
