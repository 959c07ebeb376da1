//! `cargo xtask load`: a bounded load test of `nexttoken serve` on 127.0.0.1.
//!
//! Starts the server (the bundled model by default), generates the expected greedy text of
//! every prompt offline with `nexttoken generate`, then runs `--clients` concurrent clients
//! (streaming and not, alternately) until `--requests` requests are done, within
//! `--time-limit`. Every request must complete with its offline text; a 429/503 fails the run
//! unless the clients outnumber the batch and the queue (then it is the expected refusal); the
//! steps must have batched the clients' rows;
//! the server's resident memory must grow by at most `--max-growth-mib` over the second half of
//! the requests (the first half brings it to its working size). Prints the counts, latencies, aggregate tokens/s and memory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};

use crate::{Build, build_nexttoken, cpu_features};

#[derive(Args)]
pub struct LoadArgs {
    /// The checkpoint to serve (default: the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// The server's --max-batch.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// The server's --max-queue; a smaller one than the clients makes some requests get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// The server's --kv-cache-mib: a bounded block pool (default: the server's, unbounded).
    #[arg(long)]
    kv_cache_mib: Option<usize>,
    /// Fail if the run takes longer (seconds): a hang.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
    /// Fail if the server's resident memory grows more than this (MiB) over the second half of
    /// the requests.
    #[arg(long, default_value_t = 64)]
    max_growth_mib: u64,
}

/// Prompts of different lengths, so that rows of many lengths share the batch.
pub const PROMPTS: [&str; 8] = [
    "ROMEO:",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "The",
    "KING RICHARD III:\nNow is the winter of our discontent",
    "JULIET:\nO Romeo, Romeo!",
    "To be, or not to be:",
    "MENENIUS:\nWhat work's, my countrymen, in hand? where go you",
    "Hello, I am",
];

/// The server process, killed if the test fails before stopping it.
pub struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(root: &Path, args: &LoadArgs) -> Result<()> {
    let nexttoken = build_nexttoken(root, &cpu_features(), Build::Checked)?;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| root.join("models/nexttoken-tiny-shakespeare"));
    let expected = offline(&nexttoken, &model, args.max_tokens)?;

    let mut server_args = vec![
        "--max-batch".to_string(),
        args.max_batch.to_string(),
        "--max-queue".to_string(),
        args.max_queue.to_string(),
    ];
    if let Some(mib) = args.kv_cache_mib {
        server_args.extend(["--kv-cache-mib".to_string(), mib.to_string()]);
    }
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let (server, url) = start_server(&nexttoken, &model, &server_args)?;
    let pid = server.0.id();

    // Warm-up: one request per prompt; then the requests in two halves at full concurrency.
    // The first half brings the server to its working size (batches of every size, the
    // allocator's pools), so the memory check is the second half's growth: a leak grows with
    // the requests served, a working set does not.
    for (prompt, text) in PROMPTS.iter().zip(&expected) {
        let got = request(&url, prompt, args.max_tokens, false)?;
        ensure!(
            got.text == *text,
            "warm-up: {prompt:?} gave {:?}, offline {text:?}",
            got.text
        );
    }
    let rss_warm = rss_kib(pid)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.time_limit);
    let half = args.requests / 2;
    let mut results = run_clients(&url, &expected, args, 0..half, deadline);
    let rss_half = rss_kib(pid)?;
    results.extend(run_clients(
        &url,
        &expected,
        args,
        half..args.requests,
        deadline,
    ));
    let elapsed = start.elapsed();
    let rss_after = rss_kib(pid)?;
    // `url` is the completions endpoint; /metrics sits at the server's root.
    let root = url.trim_end_matches("/v1/completions");
    let metrics = ureq::get(&format!("{root}/metrics"))
        .call()
        .context("reading the server's /metrics")?
        .into_string()?;
    drop(server);
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let (peak, steps, step_rows) = (
        metric("nexttoken_batch_size_peak"),
        metric("nexttoken_steps_total"),
        metric("nexttoken_step_rows_total"),
    );

    let ok: Vec<&Done> = results
        .iter()
        .filter_map(|r| match r {
            Outcome::Ok(done) => Some(done),
            _ => None,
        })
        .collect();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Outcome::Refused))
        .count();
    let problems: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Outcome::Mismatch(m) => Some(format!("wrong text: {m}")),
            Outcome::Failed(m) => Some(format!("failed: {m}")),
            _ => None,
        })
        .collect();
    let tokens: usize = ok.iter().map(|d| d.tokens).sum();
    let mut latencies: Vec<f64> = ok.iter().map(|d| d.latency.as_secs_f64()).collect();
    let mut first_tokens: Vec<f64> = ok
        .iter()
        .filter_map(|d| d.first_token)
        .map(|t| t.as_secs_f64())
        .collect();
    println!(
        "load: {} clients, {} requests in {:.1} s: {} completed with the offline text, {} refused \
         (429/503), {} failed",
        args.clients,
        results.len(),
        elapsed.as_secs_f64(),
        ok.len(),
        refused,
        problems.len()
    );
    println!(
        "  generated {tokens} tokens: {:.1} tokens/s; latency p50 {:.3} s, p99 {:.3} s; time to \
         first token (streamed) p50 {:.3} s, p99 {:.3} s",
        tokens as f64 / elapsed.as_secs_f64(),
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
        percentile(&mut first_tokens, 0.5),
        percentile(&mut first_tokens, 0.99),
    );
    let growth = rss_after.saturating_sub(rss_half);
    println!(
        "  server resident memory: {} MiB after the warm-up, {} MiB after the first {half} \
         requests, {} MiB after all (+{} MiB over the second half)",
        rss_warm / 1024,
        rss_half / 1024,
        rss_after / 1024,
        growth / 1024
    );
    println!(
        "  batching: at most {peak} rows in a step, {:.1} on average over {steps} steps",
        step_rows / steps.max(1.0)
    );
    for problem in problems.iter().take(5) {
        eprintln!("  {problem}");
    }
    ensure!(
        problems.is_empty(),
        "{} requests failed or gave the wrong text",
        problems.len()
    );
    ensure!(
        results.len() == args.requests,
        "only {} of {} requests ran within {} s: the server hangs or is far too slow",
        results.len(),
        args.requests,
        args.time_limit
    );
    // Each client has one request out at a time: with room for all of them in the batch and
    // the queue, a refusal is the server miscounting.
    ensure!(
        refused == 0 || args.clients > args.max_batch + args.max_queue,
        "{refused} requests were refused although the {} clients fit in --max-batch {} and \
         --max-queue {}",
        args.clients,
        args.max_batch,
        args.max_queue
    );
    ensure!(
        args.clients == 1 || args.max_batch == 1 || peak > 1.0,
        "{} concurrent clients, but no step ran more than one row: requests were not batched",
        args.clients
    );
    // Most steps come from the concurrent part (the warm-up's are one row each): with four or
    // more clients and room for them, a step averaging fewer than two rows means requests ran
    // one after another.
    let average = step_rows / steps.max(1.0);
    ensure!(
        args.clients.min(args.max_batch) < 4 || average >= 2.0,
        "{} concurrent clients, but steps averaged {average:.2} rows: requests were not batched",
        args.clients
    );
    if growth > args.max_growth_mib * 1024 {
        bail!(
            "the server's memory grew by {} MiB over the second half of the requests (limit {})",
            growth / 1024,
            args.max_growth_mib
        );
    }
    Ok(())
}

/// Requests `indices` from `args.clients` concurrent clients (streamed and not, alternately),
/// each checked against its prompt's offline text; none starts after `deadline`.
fn run_clients(
    url: &str,
    expected: &[String],
    args: &LoadArgs,
    indices: std::ops::Range<usize>,
    deadline: Instant,
) -> Vec<Outcome> {
    let next = AtomicUsize::new(indices.start);
    let results = Mutex::new(Vec::with_capacity(indices.len()));
    std::thread::scope(|scope| {
        for client in 0..args.clients {
            let (next, results, indices) = (&next, &results, &indices);
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= indices.end || Instant::now() > deadline {
                        return;
                    }
                    let prompt = index % PROMPTS.len();
                    let stream = (index + client) % 2 == 0;
                    let outcome = match request(url, PROMPTS[prompt], args.max_tokens, stream) {
                        Ok(got) if got.text == expected[prompt] => Outcome::Ok(got),
                        Ok(got) => Outcome::Mismatch(format!(
                            "{:?}: {:?} instead of {:?}",
                            PROMPTS[prompt], got.text, expected[prompt]
                        )),
                        Err(e) => match e.downcast_ref::<Refused>() {
                            Some(_) => Outcome::Refused,
                            None => Outcome::Failed(e.to_string()),
                        },
                    };
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(outcome);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Starts `nexttoken serve` on a free port with `extra` arguments; the process and the URL of
/// its completions endpoint.
pub fn start_server(
    nexttoken: &Path,
    model: &Path,
    extra: &[&str],
) -> Result<(ServerProcess, String)> {
    let mut child = Command::new(nexttoken)
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--port", "0", "--model-name", "load"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nexttoken serve")?;
    let mut stderr = BufReader::new(child.stderr.take().context("the server's stderr")?);
    let server = ServerProcess(child);
    let mut banner = String::new();
    stderr.read_line(&mut banner)?;
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no address in the server's first line: {banner}"))?
        .to_string();
    // The rest of the server's log goes to ours.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("server: {line}");
        }
    });
    Ok((server, format!("http://{address}/v1/completions")))
}

enum Outcome {
    Ok(Done),
    Refused,
    Mismatch(String),
    Failed(String),
}

pub struct Done {
    pub text: String,
    pub tokens: usize,
    pub latency: Duration,
    pub first_token: Option<Duration>,
    /// A stream's time between one piece of text and the next (inter-token latency).
    pub gaps: Vec<Duration>,
}

/// A 429 or 503: the server said to come back later.
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused (429/503)")
    }
}

impl std::error::Error for Refused {}

fn request(url: &str, prompt: &str, max_tokens: usize, stream: bool) -> Result<Done> {
    request_model(url, None, prompt, max_tokens, stream)
}

/// A greedy completion request, naming `model` when given (a peer server may need it).
pub fn request_model(
    url: &str,
    model: Option<&str>,
    prompt: &str,
    max_tokens: usize,
    stream: bool,
) -> Result<Done> {
    request_prompt(url, model, json!(prompt), max_tokens, stream)
}

/// [`request_model`] for a prompt of text or of token ids (`json!([464, 2068])`), as both
/// OpenAI's and llama-server's completions take them.
pub fn request_prompt(
    url: &str,
    model: Option<&str>,
    prompt: Value,
    max_tokens: usize,
    stream: bool,
) -> Result<Done> {
    let mut body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(model) = model {
        body["model"] = model.into();
    }
    let start = Instant::now();
    let response = match ureq::post(url)
        .timeout(Duration::from_secs(120))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(response) => response,
        Err(ureq::Error::Status(429 | 503, _)) => return Err(Refused.into()),
        Err(ureq::Error::Status(status, response)) => {
            bail!(
                "status {status}: {}",
                response.into_string().unwrap_or_default()
            )
        }
        Err(e) => bail!("{e}"),
    };
    if !stream {
        let answer: Value = serde_json::from_str(&response.into_string()?)?;
        return Ok(Done {
            text: answer["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            tokens: answer["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
            latency: start.elapsed(),
            first_token: None,
            gaps: Vec::new(),
        });
    }
    let (mut text, mut chunks, mut usage, mut first_token, mut done) =
        (String::new(), 0, None, None, false);
    let (mut gaps, mut last_piece) = (Vec::new(), None::<Instant>);
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(data)?;
        if let Some(error) = chunk.get("error") {
            bail!("error in the stream: {error}");
        }
        if let Some(generated) = chunk["usage"]["completion_tokens"].as_u64() {
            usage = Some(generated as usize);
        }
        let Some(piece) = chunk["choices"][0]["text"].as_str() else {
            continue;
        };
        chunks += 1;
        if !piece.is_empty() {
            first_token.get_or_insert(start.elapsed());
            let now = Instant::now();
            gaps.extend(last_piece.map(|last| now - last));
            last_piece = Some(now);
        }
        text += piece;
    }
    ensure!(done, "the stream ended without [DONE]");
    // The usage chunk counts tokens; without it, a chunk is a token.
    let tokens = usage.unwrap_or(chunks);
    Ok(Done {
        text,
        tokens,
        latency: start.elapsed(),
        first_token,
        gaps,
    })
}

/// Each prompt's greedy text from `nexttoken generate`, the reference for the server's.
fn offline(nexttoken: &Path, model: &Path, max_tokens: usize) -> Result<Vec<String>> {
    let output = Command::new(nexttoken)
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["-n", &max_tokens.to_string(), "--json", "--batch-size", "1"])
        .args(PROMPTS)
        .output()
        .context("running nexttoken generate")?;
    ensure!(
        output.status.success(),
        "nexttoken generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)?;
            Ok(value["text"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the server's /proc status (Linux only)")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc status")
}

pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}
