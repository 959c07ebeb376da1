//! The server end to end on 127.0.0.1: requests as clients send them (a blocking HTTP client,
//! as curl would), answers checked against the same prompts generated offline.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use nexttoken_generate::TextGenerator;
use nexttoken_model::{Checkpoint, Gpt2Config};
use nexttoken_server::{ServerOptions, serve};
use serde_json::{Value, json};

const MODEL: &str = "tiny-trained";

fn generator() -> TextGenerator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-trained");
    let mut checkpoint = Checkpoint::open(path).expect("the tiny-trained fixture");
    let config = checkpoint.config().clone();
    TextGenerator::new(checkpoint.load(&Device::flex()).unwrap(), config)
}

/// A server on an ephemeral port, stopped (gracefully) when dropped.
struct Server {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// Random weights of GPT-2's width with a 1024-token context: each step takes milliseconds, so
/// a long request is still running while a test does other things.
fn slow_generator() -> TextGenerator {
    let config = Gpt2Config {
        n_layer: 2,
        ..Gpt2Config::gpt2()
    };
    TextGenerator::new(config.init(&Device::flex()), config)
}

impl Server {
    fn start(configure: impl FnOnce(ServerOptions) -> ServerOptions) -> Self {
        Self::start_with(generator(), configure(ServerOptions::new(MODEL)))
    }

    fn start_with(generator: TextGenerator, options: ServerOptions) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, address) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let _ = bound.send(listener.local_addr()?);
                serve(listener, generator, options, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        Self {
            address: address.recv().expect("the server binds"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// POSTs `body` (raw) to /v1/completions: the status and the parsed JSON answer.
    fn post_raw(&self, body: &str, key: Option<&str>) -> (u16, Value, Option<String>) {
        let mut request =
            ureq::post(&self.url("/v1/completions")).set("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match request.send_string(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("request failed: {e}"),
        };
        let status = response.status();
        let retry_after = response.header("Retry-After").map(str::to_string);
        let text = response.into_string().unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, value, retry_after)
    }

    fn post(&self, body: Value) -> (u16, Value) {
        let (status, value, _) = self.post_raw(&body.to_string(), None);
        (status, value)
    }

    fn get(&self, path: &str) -> String {
        ureq::get(&self.url(path))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// The value of a Prometheus sample line, e.g. `nexttoken_requests_total{outcome="cancelled"}`.
    fn metric(&self, sample: &str) -> f64 {
        self.get("/metrics")
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in /metrics"))
    }

    /// Waits until `check` holds (at most 20 s).
    fn wait_for(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The greedy text of `prompt` generated alone, offline.
fn offline(generator: &TextGenerator, prompt: &str, max_tokens: usize) -> String {
    let (completions, _) = generator
        .generate_text(
            &[prompt],
            &generator.generation_config(max_tokens),
            &[],
            |_, _| ControlFlow::Continue(()),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    completions[0].text.clone()
}

/// `data: ...` payloads of a server-sent-events body.
fn events(body: impl Read) -> Vec<String> {
    BufReader::new(body)
        .lines()
        .map(Result::unwrap)
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn a_greedy_completion_is_the_offline_text() {
    let server = Server::start(|o| o);
    let (status, answer) = server.post(json!({
        "model": MODEL, "prompt": "Every effort moves you", "max_tokens": 12, "temperature": 0
    }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["model"], MODEL);
    let choice = &answer["choices"][0];
    assert_eq!(
        choice["text"],
        offline(&generator(), "Every effort moves you", 12)
    );
    assert_eq!(choice["index"], 0);
    assert!(choice["finish_reason"] == "length" || choice["finish_reason"] == "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 4);
    let completion = answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(answer["usage"]["total_tokens"], 4 + completion);

    // A list of prompts: one choice each, in order; echo puts the prompt first.
    let (status, answer) = server.post(json!({
        "prompt": ["Hello, I am", "The"], "max_tokens": 6, "temperature": 0, "echo": true
    }));
    assert_eq!(status, 200, "{answer}");
    for (index, prompt) in ["Hello, I am", "The"].iter().enumerate() {
        let expected = format!("{prompt}{}", offline(&generator(), prompt, 6));
        assert_eq!(answer["choices"][index]["text"], expected);
        assert_eq!(answer["choices"][index]["index"], index);
    }
}

#[test]
fn a_streamed_completion_sends_chunks_usage_and_done() {
    let server = Server::start(|o| o);
    let body = json!({
        "prompt": "Every effort moves you", "max_tokens": 12, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}, "logprobs": 2
    });
    let response = ureq::post(&server.url("/v1/completions"))
        .send_string(&body.to_string())
        .unwrap();
    assert!(response.content_type().starts_with("text/event-stream"));
    let data = events(response.into_reader());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let (usage, tokens) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 4);
    assert_eq!(usage["usage"]["completion_tokens"], tokens.len());
    let text: String = tokens
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, offline(&generator(), "Every effort moves you", 12));
    for chunk in tokens {
        let logprobs = &chunk["choices"][0]["logprobs"];
        assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 1);
        assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2);
    }
    let last = &tokens.last().unwrap()["choices"][0];
    assert!(last["finish_reason"].is_string(), "{last}");
}

/// Requests arriving while others run join the batch: twelve clients at once, prompts of
/// different lengths, streamed or not, each get the text of their prompt generated alone.
#[test]
fn concurrent_requests_get_their_offline_text() {
    let server = Server::start(|o| ServerOptions { max_batch: 4, ..o });
    let prompts = [
        "The",
        "Every effort moves you",
        "Hello, I am",
        "I had always thought Jack",
        "She",
        "It was",
    ];
    let generator = generator();
    let expected: Vec<String> = prompts.iter().map(|p| offline(&generator, p, 10)).collect();
    std::thread::scope(|scope| {
        for client in 0..12 {
            let (server, prompt, expected) = (&server, prompts[client % 6], &expected[client % 6]);
            scope.spawn(move || {
                let stream = client % 2 == 1;
                let body =
                    json!({"prompt": prompt, "max_tokens": 10, "temperature": 0, "stream": stream});
                let response = ureq::post(&server.url("/v1/completions"))
                    .send_string(&body.to_string())
                    .unwrap();
                let text = if stream {
                    events(response.into_reader())
                        .iter()
                        .filter(|d| *d != "[DONE]")
                        .map(|d| {
                            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                                .as_str()
                                .unwrap()
                                .to_string()
                        })
                        .collect::<String>()
                } else {
                    let answer: Value =
                        serde_json::from_str(&response.into_string().unwrap()).unwrap();
                    answer["choices"][0]["text"].as_str().unwrap().to_string()
                };
                assert_eq!(&text, expected, "client {client}: {prompt:?}");
            });
        }
    });
    assert_eq!(
        server.metric("nexttoken_requests_total{outcome=\"completed\"}"),
        12.0
    );
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(|o| ServerOptions {
        body_limit: 4096,
        ..o
    });
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"prompt\": ".into(), 400, "not valid JSON"),
        (
            json!({"prompt": "Hi", "max_tokens": "ten"}).to_string(),
            400,
            "max_tokens",
        ),
        (
            json!({"model": "gpt-4", "prompt": "Hi"}).to_string(),
            404,
            "does not exist",
        ),
        (
            json!({"prompt": "Hi", "max_tokens": 0}).to_string(),
            400,
            "at least 1",
        ),
        (
            json!({"prompt": "Hi", "max_tokens": 1000}).to_string(),
            400,
            "maximum context length is 64",
        ),
        (
            json!({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}).to_string(),
            400,
            "at most 4 stop",
        ),
        (
            json!({"prompt": "Hi", "temperature": -1}).to_string(),
            400,
            "temperature",
        ),
        (
            json!({"prompt": "Hi", "logprobs": 9}).to_string(),
            400,
            "logprobs",
        ),
        (
            json!({"prompt": [], "max_tokens": 2}).to_string(),
            400,
            "empty",
        ),
        (
            json!({"prompt": "x ".repeat(4000)}).to_string(),
            413,
            "larger than",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer, _) = server.post_raw(&body, None);
        assert_eq!(got, status, "{body:.60}: {answer}");
        let error = &answer["error"];
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{body:.60}: {answer}"
        );
        assert!(error["type"].is_string());
    }
    let (status, _) = server.post(json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(status, 200);
    assert_eq!(
        server.metric("nexttoken_requests_total{outcome=\"invalid\"}"),
        10.0
    );
    let missing = ureq::get(&server.url("/v2/nothing")).call();
    assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
}

#[test]
fn an_api_key_is_required_when_set() {
    let server = Server::start(|o| ServerOptions {
        api_key: Some("sesame".into()),
        ..o
    });
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let (status, answer, _) = server.post_raw(&body, None);
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["code"], "invalid_api_key");
    assert_eq!(server.post_raw(&body, Some("wrong")).0, 401);
    assert_eq!(server.post_raw(&body, Some("sesame")).0, 200);
    // A load balancer's readiness probe needs no key.
    assert!(server.get("/health").contains("ok"));
    assert!(matches!(
        ureq::get(&server.url("/v1/models")).call(),
        Err(ureq::Error::Status(401, _))
    ));
}

#[test]
fn models_health_and_metrics() {
    let server = Server::start(|o| o);
    let models: Value = serde_json::from_str(&server.get("/v1/models")).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["object"], "list");
    server.post(json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0}));
    let metrics = server.get("/metrics");
    for name in [
        "nexttoken_requests_total{outcome=\"completed\"} 1",
        "nexttoken_prompt_tokens_total 1",
        "nexttoken_time_to_first_token_seconds_count 1",
        "nexttoken_token_latency_seconds_bucket",
        "nexttoken_queue_depth 0",
        "nexttoken_batch_size",
    ] {
        assert!(metrics.contains(name), "{name} not in:\n{metrics}");
    }
}

/// A streaming client that goes away is cancelled: its row leaves the batch long before its
/// max_tokens, and a request waiting behind it (a batch of one) then runs; while it waited, a
/// third found the queue full and was told to retry.
#[test]
fn a_client_that_disconnects_is_cancelled_and_a_full_queue_says_retry() {
    let options = ServerOptions {
        max_batch: 1,
        max_queue: 1,
        ..ServerOptions::new(MODEL)
    };
    let server = Server::start_with(slow_generator(), options);
    let long = json!({"prompt": "The", "max_tokens": 1000, "temperature": 0, "stream": true});
    let response = ureq::post(&server.url("/v1/completions"))
        .send_string(&long.to_string())
        .unwrap();
    let mut lines = BufReader::new(response.into_reader()).lines();
    // The first chunk: the request is running.
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));

    let waiting = std::thread::scope(|scope| {
        let waiting = scope
            .spawn(|| server.post(json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0})));
        server.wait_for("the second request to queue", |s| {
            s.metric("nexttoken_queue_depth") == 1.0
        });
        let (status, answer, retry_after) =
            server.post_raw(&json!({"prompt": "Hi", "max_tokens": 2}).to_string(), None);
        assert_eq!(status, 429, "{answer}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(answer["error"]["type"], "server_overloaded");

        drop(lines);
        waiting.join().unwrap()
    });
    assert_eq!(waiting.0, 200, "{}", waiting.1);
    server.wait_for("the cancellation", |s| {
        s.metric("nexttoken_requests_total{outcome=\"cancelled\"}") == 1.0
    });
    let generated = server.metric("nexttoken_generated_tokens_total");
    assert!(
        generated < 1000.0,
        "the cancelled request ran on: {generated} tokens"
    );
    assert_eq!(
        server.metric("nexttoken_requests_total{outcome=\"rejected\"}"),
        1.0
    );
}

/// OpenAI's official Python client (scripts/requirements-client.txt) gets the offline text, not
/// streamed and streamed, with usage, and a typed NotFoundError for another model. Needs a
/// Python with that client in NEXTTOKEN_PYTHON (`cargo xtask test` installs and sets it).
#[test]
fn the_official_openai_python_client() {
    let Some(python) = std::env::var_os("NEXTTOKEN_PYTHON") else {
        eprintln!("skipped: NEXTTOKEN_PYTHON is not set (cargo xtask test sets it)");
        return;
    };
    let server = Server::start(|o| o);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(server.url("/v1"))
        .args([MODEL, "Every effort moves you", "12"])
        .output()
        .expect("NEXTTOKEN_PYTHON runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = offline(&generator(), "Every effort moves you", 12);
    assert_eq!(report["text"], expected, "{report}");
    assert_eq!(report["streamed_text"], expected, "{report}");
    assert_eq!(report["finish_reason"], report["streamed_finish_reason"]);
    assert_eq!(report["usage"]["prompt_tokens"], 4);
    assert_eq!(report["usage"], report["streamed_usage"]);
    assert_eq!(report["unknown_model_error"]["status"], 404, "{report}");
}

/// A shutdown signal stops new connections but lets a running stream finish: its last event is
/// `[DONE]` after all its tokens, and `serve` returns Ok.
#[test]
fn shutdown_lets_running_requests_finish() {
    let mut server = Server::start_with(slow_generator(), ServerOptions::new(MODEL));
    let long = json!({"prompt": "The", "max_tokens": 40, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let response = ureq::post(&server.url("/v1/completions"))
        .send_string(&long.to_string())
        .unwrap();
    let mut lines = BufReader::new(response.into_reader()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));

    let _ = server.stop.take().unwrap().send(());
    let data: Vec<String> = lines
        .map(Result::unwrap)
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
        .collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 40, "{usage}");
    let served = server.thread.take().unwrap().join().unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert!(
        ureq::get(&server.url("/health")).call().is_err(),
        "still accepting"
    );
}
