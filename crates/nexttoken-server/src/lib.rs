//! An OpenAI-compatible completions server on a nexttoken generator (`nexttoken serve`).
//!
//! `POST /v1/completions` (OpenAI's completions API, streamed as server-sent events or not, with
//! prompt scoring through `echo` and `logprobs`), `GET /v1/models`, `POST /tokenize` and
//! `POST /detokenize` (vLLM's shapes), `GET /health`, `GET /metrics` (Prometheus). Every request
//! gets an `X-Request-Id` and one access-log line through `tracing`. One generation thread runs a
//! [`TextSession`](nexttoken_generate::TextSession) that every request joins at the next step and
//! leaves when it finishes or its client goes away (continuous batching); greedy results are
//! those of the same prompt generated alone. The server keeps no state between requests, so
//! replicas behind any load balancer scale it out.
//!
//! ```no_run
//! # async fn run(generator: nexttoken_generate::TextGenerator) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let options = nexttoken_server::ServerOptions::new("gpt2");
//! options.check().expect("the defaults are valid");
//! nexttoken_server::serve(listener, generator, options, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

mod access;
mod admission;
mod api;
mod engine;
mod error;
mod metrics;
mod respond;
mod routes;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::http::HeaderValue;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use nexttoken_generate::TextGenerator;
use tokio::net::TcpListener;

pub use error::ApiError;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model's name in requests and `/v1/models`.
    pub model_name: String,
    /// Most rows (choices of all requests) generated at once.
    pub max_batch: usize,
    /// Most requests waiting for room in the batch; more get 429 with `Retry-After`. 0: none
    /// wait (requests that fit in the batch still run).
    pub max_queue: usize,
    /// Requests must send `Authorization: Bearer <key>` with one of these (all but `/health`);
    /// none: no key needed.
    pub api_keys: Vec<String>,
    /// Browser origins allowed to call the server (CORS), e.g. `https://example.com`.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted (413 above).
    pub body_limit: usize,
    /// How long a client may take to send a request's headers (the connection is closed
    /// after), and its body (408 after): slow clients cannot hold connections open.
    pub read_timeout: Duration,
    /// A request that has generated for this long ends with what it has (`finish_reason`
    /// `length`); none: no limit.
    pub request_time_limit: Option<Duration>,
    /// After a shutdown signal, how long running requests may take to finish; then each gets
    /// an error event (streams) or a 503 and the server stops.
    pub shutdown_grace: Duration,
    /// How often a stream with nothing to send (waiting in the queue) gets an SSE comment, so
    /// that proxies and clients do not take it for dead.
    pub keep_alive: Duration,
    /// Most prompt tokens one step takes beside the running rows' next tokens: a long prompt
    /// joins over several steps instead of stalling every stream for its whole length (with
    /// no row decoding, prompts go whole).
    pub prefill_chunk: usize,
    /// The KV cache's bound in bytes: rows that would not fit wait to start. None: it grows
    /// with the batch (at most `max_batch` rows of the model's context).
    pub kv_cache_bytes: Option<u64>,
    /// Requests whose prompts start alike (a system prompt, few-shot examples) reuse the
    /// cached keys and values of that prefix instead of computing them again.
    pub prefix_caching: bool,
}

impl ServerOptions {
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            max_batch: 16,
            max_queue: 64,
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            body_limit: 1 << 20,
            read_timeout: Duration::from_secs(30),
            request_time_limit: None,
            shutdown_grace: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
            prefill_chunk: 64,
            kv_cache_bytes: None,
            prefix_caching: true,
        }
    }

    /// Checks that the options can run a server.
    ///
    /// # Errors
    /// The option at fault and what it takes.
    pub fn check(&self) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("the batch must hold at least 1 row (--max-batch)".into());
        }
        if self.api_keys.iter().any(|key| key.trim().is_empty()) {
            return Err(
                "an API key is empty: it would lock every client out (give a key, or \
                        no --api-key at all)"
                    .into(),
            );
        }
        if let Some(key) = self
            .api_keys
            .iter()
            .find(|key| key.chars().any(char::is_whitespace))
        {
            return Err(format!(
                "an API key holds white space ({} characters): clients send keys without it",
                key.chars().count()
            ));
        }
        if let Some(origin) = self
            .cors_origins
            .iter()
            .find(|origin| HeaderValue::from_str(origin).is_err() || origin.is_empty())
        {
            return Err(format!(
                "{origin:?} is not an origin (like https://example.com)"
            ));
        }
        if self.prefill_chunk == 0 {
            return Err("a step must take at least 1 prompt token (--prefill-chunk)".into());
        }
        if self.read_timeout.is_zero() || self.keep_alive.is_zero() {
            return Err("the read timeout and the keep-alive interval must be above 0".into());
        }
        Ok(())
    }
}

/// The router and the generation thread behind it.
struct App {
    router: axum::Router,
    /// Set when the shutdown grace has run out: the engine ends what runs.
    abort: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    /// The engine's hook that makes its next step panic.
    #[cfg(test)]
    fail_next_step: Arc<AtomicBool>,
}

/// Starts the generation thread and builds the routes on it.
fn app(generator: TextGenerator, options: &ServerOptions) -> std::io::Result<App> {
    options
        .check()
        .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
    let block_bytes = generator.model().kv_block_bytes();
    let kv_cache_blocks = options
        .kv_cache_bytes
        .map(|bytes| usize::try_from(bytes / block_bytes as u64).unwrap_or(usize::MAX));
    if kv_cache_blocks == Some(0) {
        let message = format!(
            "the KV cache's memory holds no block of this model's ({block_bytes} bytes: 16 \
             positions of every layer): give it more (--kv-cache-mib)"
        );
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            message,
        ));
    }
    let limits = api::ModelLimits {
        name: options.model_name.clone(),
        context_length: generator.config().n_positions,
        vocab_size: generator.config().vocab_size,
        eos_token_id: generator.config().eos_token_id,
        max_batch: options.max_batch,
    };
    let tokenizer = *generator.tokenizer();
    let metrics = Arc::new(metrics::Metrics::default());
    let admission = Arc::new(admission::Admission::new(
        options.max_batch,
        options.max_queue,
    ));
    let alive = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    #[cfg(test)]
    let fail_next_step = Arc::new(AtomicBool::new(false));
    let (engine, thread) = engine::Engine::start(
        generator,
        engine::Shared {
            admission: admission.clone(),
            metrics: metrics.clone(),
            alive: alive.clone(),
            abort: abort.clone(),
            time_limit: options.request_time_limit,
            prefill_chunk: options.prefill_chunk,
            kv_cache_blocks,
            prefix_caching: options.prefix_caching,
            #[cfg(test)]
            fail_next_step: fail_next_step.clone(),
        },
    )?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = routes::AppState {
        engine,
        limits: Arc::new(limits),
        tokenizer,
        metrics,
        admission,
        api_keys: options.api_keys.clone().into(),
        body_limit: options.body_limit,
        body_timeout: options.read_timeout,
        keep_alive: options.keep_alive,
        tokenizing: Arc::new(tokio::sync::Semaphore::new(cores)),
        alive,
        started: respond::unix_time(),
    };
    let origins: Vec<HeaderValue> = options
        .cors_origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    Ok(App {
        router: routes::router(state, &origins),
        abort,
        thread,
        #[cfg(test)]
        fail_next_step,
    })
}

/// Serves until `shutdown` completes, then stops accepting connections and lets running
/// requests finish (at most `options.shutdown_grace`, after which each ends with an error).
///
/// # Errors
/// Invalid options ([`ServerOptions::check`], as `InvalidInput`), or the generation thread
/// cannot start.
pub async fn serve(
    listener: TcpListener,
    generator: TextGenerator,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let App {
        router: app,
        abort,
        thread,
        ..
    } = app(generator, &options)?;

    // hyper's own connection loop rather than `axum::serve`, for the header read timeout
    // (slowloris) that needs a timer.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.read_timeout);
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: try again shortly rather than spin.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(app);
    let grace = options.shutdown_grace;
    let closed = connections.shutdown();
    let mut closed = pin!(closed);
    tokio::select! {
        () = &mut closed => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                "requests still running {grace:?} after the shutdown signal: ending them"
            );
            abort.store(true, std::sync::atomic::Ordering::Release);
            // Long enough for the engine's next loop and the streams' last events.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut closed).await;
        }
    }
    // The router (and with it the engine's handle) is gone: the thread ends once idle.
    tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use burn::tensor::Device;
    use nexttoken_model::Gpt2Config;
    use tower::ServiceExt;

    use super::*;

    /// One layer of width 8 with GPT-2's vocabulary, weights from a fixed seed.
    fn tiny_generator() -> TextGenerator {
        let config = Gpt2Config {
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            n_positions: 32,
            ..Gpt2Config::gpt2()
        };
        TextGenerator::new(config.init_seeded(&Device::flex(), 2026), config).unwrap()
    }

    async fn answer(router: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (status, routes::body_text(response).await)
    }

    fn completion() -> Request<Body> {
        Request::post("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"prompt": "Hi", "max_tokens": 3, "temperature": 0}"#,
            ))
            .unwrap()
    }

    /// A step that panics in the engine, on the real completions route: the request running it
    /// gets a 500 that says so, the metrics count it as failed, and the next request is served
    /// by a fresh session with the text it gets on a server that never failed.
    #[tokio::test]
    async fn a_panicking_step_fails_its_request_and_the_next_is_served() {
        let app = app(tiny_generator(), &ServerOptions::new("tiny")).unwrap();
        let (status, healthy) = answer(&app.router, completion()).await;
        assert_eq!(status, StatusCode::OK, "{healthy}");
        app.fail_next_step.store(true, Ordering::Release);
        let (status, body) = answer(&app.router, completion()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        routes::assert_panic_error(&body);
        let (status, again) = answer(&app.router, completion()).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        let text = |body: &str| -> serde_json::Value {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["choices"][0]["text"].clone()
        };
        assert_eq!(text(&again), text(&healthy));
        let metrics = Request::get("/metrics").body(Body::empty()).unwrap();
        let (_, metrics) = answer(&app.router, metrics).await;
        for (outcome, count) in [("failed", 1), ("completed", 2)] {
            let line = format!("nexttoken_requests_total{{outcome=\"{outcome}\"}} {count}");
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
        let health = Request::get("/health").body(Body::empty()).unwrap();
        assert_eq!(answer(&app.router, health).await.0, StatusCode::OK);
    }

    /// The value of a sample line of `/metrics`.
    async fn metric(router: &axum::Router, sample: &str) -> f64 {
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        let (_, text) = answer(router, request).await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in /metrics"))
    }

    /// A streaming client that goes away leaves the batch before the next step: the engine
    /// generates nothing for it after the step that was running when it left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_leaves_is_dropped_before_the_next_step() {
        use futures_util::StreamExt;
        // GPT-2's width at 6 layers: a step takes some 10 ms, longer than the test takes
        // between reading the count and dropping the body.
        let config = Gpt2Config {
            n_layer: 6,
            ..Gpt2Config::gpt2()
        };
        let generator =
            TextGenerator::new(config.init_seeded(&Device::flex(), 2026), config).unwrap();
        let app = app(generator, &ServerOptions::new("gpt2-shaped")).unwrap();
        let request = Request::post("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"prompt": "The", "max_tokens": 1000, "temperature": 0, "stream": true,
                    "ignore_eos": true}"#,
            ))
            .unwrap();
        let response = app.router.clone().oneshot(request).await.unwrap();
        let mut body = response.into_body().into_data_stream();
        assert!(body.next().await.is_some(), "a first event");
        let generated = "nexttoken_generated_tokens_total";
        let before = metric(&app.router, generated).await;
        drop(body);
        let start = Instant::now();
        while metric(
            &app.router,
            "nexttoken_requests_total{outcome=\"cancelled\"}",
        )
        .await
            < 1.0
        {
            assert!(start.elapsed() < Duration::from_secs(10), "no cancellation");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after = metric(&app.router, generated).await;
        // The step running while /metrics answered, and the one running when the body went.
        assert!(
            after - before <= 2.0,
            "{} tokens generated after the client left",
            after - before
        );
        assert!(after < 1000.0);
    }

    /// Once the generation thread has stopped, `/health` says so (a load balancer then takes
    /// the replica out) and completions get 503, not 200 and a hang.
    #[tokio::test]
    async fn health_follows_the_generation_thread() {
        let app = app(tiny_generator(), &ServerOptions::new("tiny")).unwrap();
        let call = |request: Request<Body>| {
            let router = app.router.clone();
            async move { router.oneshot(request).await.unwrap().status() }
        };
        let health = || Request::get("/health").body(Body::empty()).unwrap();
        assert_eq!(call(health()).await, StatusCode::OK);
        // The engine ends as it does when the shutdown grace runs out.
        app.abort.store(true, Ordering::Release);
        let start = Instant::now();
        while !app.thread.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the engine did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(call(health()).await, StatusCode::SERVICE_UNAVAILABLE);
        let completion = Request::post("/v1/completions")
            .body(Body::from(r#"{"prompt": "Hi", "max_tokens": 2}"#))
            .unwrap();
        assert_eq!(call(completion).await, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn options_that_cannot_serve_are_refused() {
        let base = ServerOptions::new("m");
        assert_eq!(base.check(), Ok(()));
        let cases = [
            (
                ServerOptions {
                    api_keys: vec![String::new()],
                    ..base.clone()
                },
                "empty",
            ),
            (
                ServerOptions {
                    api_keys: vec!["a b".into()],
                    ..base.clone()
                },
                "white space",
            ),
            (
                ServerOptions {
                    max_batch: 0,
                    ..base.clone()
                },
                "--max-batch",
            ),
            (
                ServerOptions {
                    cors_origins: vec!["bad\norigin".into()],
                    ..base.clone()
                },
                "origin",
            ),
            (
                ServerOptions {
                    read_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "above 0",
            ),
        ];
        for (options, expected) in cases {
            let error = options.check().unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
