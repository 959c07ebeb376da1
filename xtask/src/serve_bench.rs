//! `cargo xtask serve-bench`: `nexttoken serve` against a peer OpenAI-compatible server, the
//! same client at each concurrency: aggregate generated tokens/s and time to first token.
//!
//! nexttoken's server is started here on the checkpoint (default: the GPT-2-124M-shaped random
//! one of `cargo xtask speed`); the peer runs already, on the same machine, at `--peer-url`
//! (README: llama.cpp's server through llama-cpp-python, on the same checkpoint as GGUF f32).
//! Each concurrency level runs on both, nexttoken first, every request streamed and greedy.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args;

use crate::load::{Done, PROMPTS, percentile, request_model, start_server};
use crate::{build_nexttoken, cpu_features, speed};

#[derive(Args)]
pub struct ServeBenchArgs {
    /// The checkpoint nexttoken serves (default: the GPT-2-124M-shaped random one).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "1,4,16,32", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Requests per client at each level.
    #[arg(long, default_value_t = 4)]
    requests_per_client: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// nexttoken's backend.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// nexttoken's CPU threads.
    #[arg(long)]
    threads: Option<usize>,
    /// A peer server's completions endpoint, e.g. http://127.0.0.1:8081/v1/completions.
    #[arg(long)]
    peer_url: Option<String>,
    /// The model name the peer expects in requests.
    #[arg(long)]
    peer_model: Option<String>,
    /// A label for the peer in the table.
    #[arg(long, default_value = "peer")]
    peer_name: String,
}

struct Level {
    server: String,
    concurrency: usize,
    requests: usize,
    seconds: f64,
    tokens: usize,
    ttft_p50: f64,
    ttft_p99: f64,
}

pub fn run(root: &std::path::Path, args: &ServeBenchArgs) -> Result<()> {
    let nexttoken = build_nexttoken(root, &cpu_features())?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => speed::default_checkpoint(root)?,
    };
    let max_batch = args
        .concurrency
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .to_string();
    let mut extra = vec![
        "--max-batch",
        &max_batch,
        "--max-queue",
        "1024",
        "--backend",
        &args.backend,
    ];
    let threads = args.threads.map(|t| t.to_string());
    if let Some(threads) = &threads {
        extra.extend(["--threads", threads]);
    }
    let (server, url) = start_server(&nexttoken, &model, &extra)?;
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        // Warm-up at this level, untimed.
        drive(&url, None, concurrency, concurrency, args.max_tokens)?;
        levels.push(level("nexttoken", &url, None, concurrency, args)?);
        if let Some(peer) = &args.peer_url {
            drive(
                peer,
                args.peer_model.as_deref(),
                concurrency,
                concurrency,
                args.max_tokens,
            )?;
            levels.push(level(
                &args.peer_name,
                peer,
                args.peer_model.as_deref(),
                concurrency,
                args,
            )?);
        }
    }
    drop(server);
    println!(
        "\nmodel: {}, {} tokens per request, streamed, greedy",
        model.display(),
        args.max_tokens
    );
    println!("| concurrency | server | requests | generated t/s | TTFT p50 | TTFT p99 |");
    println!("| ----------: | ------ | -------: | ------------: | -------: | -------: |");
    for l in &levels {
        println!(
            "| {} | {} | {} | {:.1} | {:.3} s | {:.3} s |",
            l.concurrency,
            l.server,
            l.requests,
            l.tokens as f64 / l.seconds,
            l.ttft_p50,
            l.ttft_p99
        );
    }
    Ok(())
}

fn level(
    name: &str,
    url: &str,
    model: Option<&str>,
    concurrency: usize,
    args: &ServeBenchArgs,
) -> Result<Level> {
    let requests = concurrency * args.requests_per_client;
    let start = Instant::now();
    let done = drive(url, model, concurrency, requests, args.max_tokens)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut first: Vec<f64> = done
        .iter()
        .filter_map(|d| d.first_token)
        .map(|t| t.as_secs_f64())
        .collect();
    Ok(Level {
        server: name.to_string(),
        concurrency,
        requests,
        seconds,
        tokens: done.iter().map(|d| d.tokens).sum(),
        ttft_p50: percentile(&mut first, 0.5),
        ttft_p99: percentile(&mut first, 0.99),
    })
}

/// `requests` streamed requests from `concurrency` clients; every one must succeed.
fn drive(
    url: &str,
    model: Option<&str>,
    concurrency: usize,
    requests: usize,
    max_tokens: usize,
) -> Result<Vec<Done>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(requests));
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= requests {
                        return;
                    }
                    let prompt = PROMPTS[index % PROMPTS.len()];
                    let outcome = request_model(url, model, prompt, max_tokens, true);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(outcome);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    ensure!(
        results.len() == requests,
        "{} of {requests} requests ran",
        results.len()
    );
    results
        .into_iter()
        .map(|r| r.with_context(|| format!("a request to {url}")))
        .collect()
}
