//! `cargo xtask serve-bench`: `nexttoken serve` against a peer OpenAI-compatible server, the
//! same client at each concurrency: aggregate generated tokens/s and time to first token.
//!
//! nexttoken's server is started here on the checkpoint (default: the GPT-2-124M-shaped random
//! one of `cargo xtask speed`). The peer is either started here too (`--peer llama.cpp`:
//! llama.cpp's `llama-server` on the same checkpoint converted to GGUF f32 by llama.cpp's
//! converter, as many parallel slots as the highest concurrency, the same threads), or runs
//! already at `--peer-url`. Each concurrency level runs on both, nexttoken first, every request
//! streamed and greedy, after an untimed warm-up round at that level.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args;

use crate::llama_cpp::{self, LlamaServer};
use crate::load::{Done, PROMPTS, percentile, request_model, start_server};
use crate::{Build, build_nexttoken, cpu_features, speed};

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
    /// Start a peer server here: `llama.cpp` (needs `scripts/install-backends.sh llama-cpp`,
    /// which this runs when llama-server is missing).
    #[arg(long, value_parser = ["llama.cpp"], conflicts_with = "peer_url")]
    peer: Option<String>,
    /// A running peer server's completions endpoint, e.g. http://127.0.0.1:8081/v1/completions.
    #[arg(long)]
    peer_url: Option<String>,
    /// The model name the peer expects in requests.
    #[arg(long)]
    peer_model: Option<String>,
    /// A label for the `--peer-url` server in the table.
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
    let nexttoken = build_nexttoken(root, &cpu_features(), Build::Release)?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => speed::default_checkpoint(root)?,
    };
    // Both servers take every client of the top level into one batch.
    let top = args.concurrency.iter().copied().max().unwrap_or(1);
    let max_batch = top.to_string();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads_arg = threads.to_string();
    let extra = [
        "--max-batch",
        &max_batch,
        "--max-queue",
        "1024",
        "--backend",
        &args.backend,
        "--threads",
        &threads_arg,
    ];
    let (server, url) = start_server(&nexttoken, &model, &extra)?;
    let (started_peer, peer_name) = match &args.peer {
        Some(_) => {
            let gguf = llama_cpp::gguf(root, &model, "f32")?;
            // Room for the longest prompt and the generation in every slot.
            let per_slot = (args.max_tokens + 64).next_power_of_two();
            let peer = LlamaServer::start(root, &gguf, threads, top, per_slot)?;
            (Some(peer), "llama.cpp (llama-server, GGUF f32)".to_string())
        }
        None => (None, args.peer_name.clone()),
    };
    let peer_url = started_peer
        .as_ref()
        .map(|peer| peer.completions_url.clone())
        .or_else(|| args.peer_url.clone());
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        // Warm-up at this level, untimed.
        drive(&url, None, concurrency, concurrency, args.max_tokens)?;
        levels.push(level("nexttoken", &url, None, concurrency, args)?);
        if let Some(peer) = &peer_url {
            drive(
                peer,
                args.peer_model.as_deref(),
                concurrency,
                concurrency,
                args.max_tokens,
            )?;
            levels.push(level(
                &peer_name,
                peer,
                args.peer_model.as_deref(),
                concurrency,
                args,
            )?);
        }
    }
    drop(server);
    drop(started_peer);
    println!(
        "\nmodel: {}, {} tokens per request, streamed, greedy, {threads} threads, {}",
        model.display(),
        args.max_tokens,
        crate::cpu_name()
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
