//! `nexttoken perplexity`: a text's perplexity over windows of the context (transformers'
//! recipe; llama-perplexity's report: the value with its standard error, tokens, time).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use nexttoken_tokenizer::VOCAB_SIZE;

use crate::args::PerplexityArgs;
use crate::kl_divergence::{BaseComparison, BaseWriter, Scoring};
use crate::{apply, model};

pub fn run(args: PerplexityArgs) -> Result<()> {
    apply(&args.run)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut opened = model::open(&args.model, args.json)?;
    let (generator, _) = nexttoken_load::load(args.backend, &mut opened.weights, args.model.dtype)?;
    let ids = generator.tokenizer().encode(&text);
    let window = args
        .context
        .unwrap_or_else(|| generator.model().context_length());
    let stride = args.stride.unwrap_or((window / 2).max(1));
    let progress = std::io::stderr().is_terminal() && !args.json;
    let scoring = Scoring {
        width: generator.model().vocab_size().min(VOCAB_SIZE as usize),
        window,
        stride,
        ids,
    };
    let mut distributions = match &args.kl_divergence_base {
        None => Distributions::Ignored,
        Some(path) if args.kl_divergence => {
            Distributions::Compared(BaseComparison::open(path, &scoring)?)
        }
        Some(path) => Distributions::Saved(BaseWriter::create(path, &scoring)?),
    };
    let ids = scoring.ids;
    let start = Instant::now();
    let scored = generator.perplexity(
        &ids,
        window,
        stride,
        |logits, next| match &mut distributions {
            Distributions::Ignored => {}
            Distributions::Saved(writer) => writer.push(logits),
            Distributions::Compared(comparison) => comparison.push(logits, next),
        },
        |done, all| {
            if progress {
                eprint!("\rwindow {done}/{all}");
                let _ = std::io::stderr().flush();
            }
        },
    )?;
    if progress {
        eprintln!();
    }
    let seconds = start.elapsed().as_secs_f64();
    let divergence = match distributions {
        Distributions::Ignored => None,
        Distributions::Saved(writer) => {
            writer.finish()?;
            None
        }
        Distributions::Compared(comparison) => Some(comparison.finish()?),
    };
    let (value, uncertainty) = (scored.value(), scored.uncertainty());
    if args.json {
        let mut line = json!({
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
        if let Some(divergence) = &divergence {
            let (same_top, same_top_uncertainty) = divergence.same_top_share();
            line["kl_divergence"] = json!({
                "mean": divergence.mean(),
                "uncertainty": divergence.uncertainty(),
                "median": divergence.quantile(0.5),
                "p99": divergence.quantile(0.99),
                "max": divergence.quantile(1.0),
                "same_top": same_top,
                "same_top_uncertainty": same_top_uncertainty,
                "base_perplexity": divergence.base_perplexity(),
            });
        }
        println!("{line}");
    } else {
        println!(
            "perplexity: {value:.4} +/- {uncertainty:.4} ({} of {} tokens scored in {} windows of \
             {window}, stride {stride}; {seconds:.2} s)",
            scored.nll.len(),
            ids.len(),
            scored.windows,
        );
        if let Some(divergence) = &divergence {
            let (same_top, same_top_uncertainty) = divergence.same_top_share();
            println!(
                "KL divergence from the base: mean {:.6} +/- {:.6}, median {:.6}, 99% {:.6}, \
                 max {:.6}; same top id {:.2} +/- {:.2} %; base perplexity {:.4}",
                divergence.mean(),
                divergence.uncertainty(),
                divergence.quantile(0.5),
                divergence.quantile(0.99),
                divergence.quantile(1.0),
                100.0 * same_top,
                100.0 * same_top_uncertainty,
                divergence.base_perplexity(),
            );
        }
    }
    Ok(())
}

/// What happens to each scored id's distribution.
enum Distributions {
    Ignored,
    Saved(BaseWriter),
    Compared(BaseComparison),
}
