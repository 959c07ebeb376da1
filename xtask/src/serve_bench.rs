//! `cargo xtask serve-bench`: `nexttoken serve` against a peer OpenAI-compatible server, the
//! same client at each concurrency: aggregate generated tokens/s and time to first token.
//!
//! nexttoken's server is started here on the checkpoint (default: the GPT-2-124M-shaped random
//! one of `cargo xtask speed`). The peer is either started here too (`--peer llama.cpp`:
//! llama.cpp's `llama-server` on the same checkpoint converted to a GGUF of the `--dtype` by
//! llama.cpp's converter, as many parallel slots as the highest concurrency, the same
//! threads), or runs already at `--peer-url`. Each concurrency level runs on both, nexttoken first, every request
//! streamed and greedy, after an untimed warm-up round at that level.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use serde_json::json;

use crate::llama_cpp::{self, LlamaServer};
use crate::load::{Done, PROMPTS, percentile, request_model, request_prompt, start_server};
use crate::{Build, build_nexttoken, cpu_features, speed};

#[derive(Args)]
pub struct ServeBenchArgs {
    /// The checkpoint nexttoken serves (default: the GPT-2-124M-shaped random one).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "1,4,16,32,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// What to measure: `levels` (generated tokens/s and time to first token at each
    /// `--concurrency`); `interference` (15 streams' inter-token latency, without and then with
    /// a 900-token prompt joining every 3 s); `shared-prefix` (32 requests at once whose
    /// prompts share 512 tokens and differ in 16, after one with the prefix: time to first
    /// token with prefix caching, without it, and the peer's).
    #[arg(long, default_value = "levels", value_parser = ["levels", "interference", "shared-prefix"])]
    scenario: String,
    /// The dtype both servers compute in: nexttoken's `--dtype`, and the GGUF llama-server
    /// loads (`--peer llama.cpp`).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
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
    let max_batch = top
        .max(SHARED_PREFIX_REQUESTS)
        .max(INTERFERENCE_STREAMS + 1)
        .to_string();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads_arg = threads.to_string();
    let extra = [
        "--dtype",
        &args.dtype,
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
            let gguf = llama_cpp::gguf(root, &model, &args.dtype)?;
            // Room for the longest prompt and the generation in every slot.
            let longest_prompt = match args.scenario.as_str() {
                "levels" => 64,
                _ => LONG_PROMPT,
            };
            let per_slot = (args.max_tokens + longest_prompt).next_power_of_two();
            let slots = top.max(SHARED_PREFIX_REQUESTS);
            let peer = LlamaServer::start(root, &gguf, threads, slots, per_slot)?;
            let name = format!("llama.cpp (llama-server, GGUF {})", args.dtype);
            (Some(peer), name)
        }
        None => (None, args.peer_name.clone()),
    };
    let peer_url = started_peer
        .as_ref()
        .map(|peer| peer.completions_url.clone())
        .or_else(|| args.peer_url.clone());
    let peer = peer_url
        .as_deref()
        .map(|url| (peer_name.as_str(), url, args.peer_model.as_deref()));
    let about = format!(
        "model: {} ({}), streamed, greedy, {threads} threads, {}",
        model.display(),
        args.dtype,
        crate::cpu_name()
    );
    match args.scenario.as_str() {
        "interference" => {
            let mut rows = vec![("nexttoken".to_string(), interference(&url, None, args)?)];
            if let Some((name, url, model)) = peer {
                rows.push((name.to_string(), interference(url, model, args)?));
            }
            println!(
                "\n{about}; {INTERFERENCE_STREAMS} streams of {} tokens",
                args.max_tokens
            );
            println!(
                "| server | ITL p50 alone | ITL p99 alone | ITL p50 with long prompts | ITL p99 with long prompts | p99 ratio |"
            );
            println!("| ------ | ---: | ---: | ---: | ---: | ---: |");
            for (name, [p50, p99, long_p50, long_p99]) in rows {
                println!(
                    "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
                    p50 * 1e3,
                    p99 * 1e3,
                    long_p50 * 1e3,
                    long_p99 * 1e3,
                    long_p99 / p99
                );
            }
        }
        "shared-prefix" => {
            let mut rows = vec![("nexttoken".to_string(), shared_prefix(&url, None, args)?)];
            drop(server);
            let mut without = extra.to_vec();
            without.push("--no-prefix-caching");
            let (plain, plain_url) = start_server(&nexttoken, &model, &without)?;
            let name = "nexttoken --no-prefix-caching".to_string();
            rows.push((name, shared_prefix(&plain_url, None, args)?));
            drop(plain);
            if let Some((name, url, model)) = peer {
                rows.push((
                    format!("{name}, cache_prompt"),
                    shared_prefix(url, model, args)?,
                ));
            }
            println!(
                "\n{about}; {SHARED_PREFIX_REQUESTS} requests at once, a {SHARED_PREFIX}-token \
                 prefix and {SHARED_TAIL} tokens each, {} tokens generated",
                args.max_tokens
            );
            println!("| server | TTFT p50 | TTFT p99 | all done |");
            println!("| ------ | ---: | ---: | ---: |");
            for (name, [p50, p99, all]) in rows {
                println!("| {name} | {p50:.3} s | {p99:.3} s | {all:.2} s |");
            }
            return Ok(());
        }
        _ => levels(&url, peer, args, &about)?,
    }
    drop(server);
    drop(started_peer);
    Ok(())
}

/// Tokens/s and time to first token at each concurrency, nexttoken then the peer.
fn levels(
    url: &str,
    peer: Option<(&str, &str, Option<&str>)>,
    args: &ServeBenchArgs,
    about: &str,
) -> Result<()> {
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        // Warm-up at this level, untimed.
        drive(url, None, concurrency, concurrency, args.max_tokens)?;
        levels.push(level("nexttoken", url, None, concurrency, args)?);
        if let Some((name, peer, model)) = peer {
            drive(peer, model, concurrency, concurrency, args.max_tokens)?;
            levels.push(level(name, peer, model, concurrency, args)?);
        }
    }
    println!("\n{about}, {} tokens per request", args.max_tokens);
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

/// Streams in the interference run.
const INTERFERENCE_STREAMS: usize = 15;
/// The long prompt's length in the interference run.
const LONG_PROMPT: usize = 900;
/// How often the long prompt joins.
const LONG_EVERY: Duration = Duration::from_secs(3);
/// How long each half of the interference run lasts.
const INTERFERENCE_RUN: Duration = Duration::from_secs(20);

/// `n` token ids spread over GPT-2's vocabulary, from `seed`.
fn ids(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (200 + (i * 7919 + seed * 104_729) % 50_000) as u32)
        .collect()
}

/// Inter-token latency p50 and p99 of [`INTERFERENCE_STREAMS`] greedy streams, first alone,
/// then while a [`LONG_PROMPT`]-token prompt joins every [`LONG_EVERY`].
fn interference(url: &str, model: Option<&str>, args: &ServeBenchArgs) -> Result<[f64; 4]> {
    drive(
        url,
        model,
        INTERFERENCE_STREAMS,
        INTERFERENCE_STREAMS,
        args.max_tokens,
    )?;
    let run = |long_prompts: bool| -> Result<Vec<f64>> {
        let stop = AtomicBool::new(false);
        let gaps = Mutex::new(Vec::new());
        let failure = Mutex::new(None);
        let fail = |e: anyhow::Error| {
            failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        };
        std::thread::scope(|scope| {
            for client in 0..INTERFERENCE_STREAMS {
                let (stop, gaps, fail) = (&stop, &gaps, &fail);
                scope.spawn(move || {
                    let mut index = client;
                    while !stop.load(Ordering::Relaxed) {
                        let prompt = PROMPTS[index % PROMPTS.len()];
                        match request_model(url, model, prompt, args.max_tokens, true) {
                            Ok(done) => gaps
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .extend(done.gaps.iter().map(Duration::as_secs_f64)),
                            Err(e) => return fail(e),
                        }
                        index += INTERFERENCE_STREAMS;
                    }
                });
            }
            if long_prompts {
                let (stop, fail) = (&stop, &fail);
                scope.spawn(move || {
                    let mut seed = 0;
                    while !stop.load(Ordering::Relaxed) {
                        seed += 1;
                        let prompt = json!(ids(LONG_PROMPT, seed));
                        if let Err(e) = request_prompt(url, model, prompt, 1, true) {
                            return fail(e);
                        }
                        std::thread::sleep(LONG_EVERY);
                    }
                });
            }
            std::thread::sleep(INTERFERENCE_RUN);
            stop.store(true, Ordering::Relaxed);
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e.context(format!("the interference run on {url}")));
        }
        Ok(gaps.into_inner().unwrap_or_else(|e| e.into_inner()))
    };
    let (mut alone, mut long) = (run(false)?, run(true)?);
    Ok([
        percentile(&mut alone, 0.5),
        percentile(&mut alone, 0.99),
        percentile(&mut long, 0.5),
        percentile(&mut long, 0.99),
    ])
}

/// Requests at once in the shared-prefix run.
const SHARED_PREFIX_REQUESTS: usize = 32;
/// Tokens they share, and tokens each has of its own.
const SHARED_PREFIX: usize = 512;
const SHARED_TAIL: usize = 16;

/// Time to first token p50 and p99 of [`SHARED_PREFIX_REQUESTS`] requests at once, each a
/// shared [`SHARED_PREFIX`]-token prefix and [`SHARED_TAIL`] tokens of its own, after one
/// request with the prefix has run; and the time until all are done.
fn shared_prefix(url: &str, model: Option<&str>, args: &ServeBenchArgs) -> Result<[f64; 3]> {
    let prefix = ids(SHARED_PREFIX, 0);
    let prompt = |request: usize| {
        let mut prompt = prefix.clone();
        prompt.extend(ids(SHARED_TAIL, request + 1));
        json!(prompt)
    };
    request_prompt(
        url,
        model,
        prompt(SHARED_PREFIX_REQUESTS),
        args.max_tokens,
        true,
    )?;
    let start = Instant::now();
    let done: Vec<Result<Done>> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..SHARED_PREFIX_REQUESTS)
            .map(|request| {
                let prompt = prompt(request);
                scope.spawn(move || request_prompt(url, model, prompt, args.max_tokens, true))
            })
            .collect();
        requests
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let all = start.elapsed().as_secs_f64();
    let mut first = Vec::with_capacity(done.len());
    for done in done {
        let done = done.with_context(|| format!("a shared-prefix request to {url}"))?;
        first.extend(done.first_token.map(|t| t.as_secs_f64()));
    }
    ensure!(
        first.len() == SHARED_PREFIX_REQUESTS,
        "a request generated no text"
    );
    Ok([
        percentile(&mut first, 0.5),
        percentile(&mut first, 0.99),
        all,
    ])
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
