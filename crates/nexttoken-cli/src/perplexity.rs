//! `nexttoken perplexity`: a text's perplexity over windows of the context (transformers'
//! recipe; llama-perplexity's report: the value with its standard error, tokens, time).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::args::PerplexityArgs;
use crate::{apply, load_generator, model};

pub fn run(args: PerplexityArgs) -> Result<()> {
    apply(&args.run)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut opened = model::open(&args.model, args.json)?;
    let (generator, _) = load_generator(args.backend, &mut opened.checkpoint, args.model.dtype)?;
    let ids = generator.tokenizer().encode(&text);
    let window = args
        .context
        .unwrap_or_else(|| generator.model().context_length());
    let stride = args.stride.unwrap_or((window / 2).max(1));
    let progress = std::io::stderr().is_terminal() && !args.json;
    let start = Instant::now();
    let scored = generator.perplexity(&ids, window, stride, |done, all| {
        if progress {
            eprint!("\rwindow {done}/{all}");
            let _ = std::io::stderr().flush();
        }
    })?;
    if progress {
        eprintln!();
    }
    let seconds = start.elapsed().as_secs_f64();
    let (value, uncertainty) = (scored.value(), scored.uncertainty());
    if args.json {
        let line = json!({
            "model": opened.name,
            "perplexity": value,
            "uncertainty": uncertainty,
            "mean_nll": scored.nll.iter().sum::<f64>() / scored.nll.len() as f64,
            "tokens": ids.len(),
            "scored": scored.nll.len(),
            "windows": scored.windows,
            "context": window,
            "stride": stride,
            "seconds": seconds,
        });
        println!("{line}");
    } else {
        println!(
            "perplexity: {value:.4} +/- {uncertainty:.4} ({} of {} tokens scored in {} windows of \
             {window}, stride {stride}; {seconds:.2} s)",
            scored.nll.len(),
            ids.len(),
            scored.windows,
        );
    }
    Ok(())
}
