//! An OpenAI-compatible completions server on a nexttoken generator (`nexttoken serve`).
//!
//! `POST /v1/completions` (OpenAI's completions API, streamed as server-sent events or not),
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus). One generation thread runs a
//! [`TextSession`](nexttoken_generate::TextSession) that every request joins at the next step and
//! leaves when it finishes or its client goes away (continuous batching); greedy results are
//! those of the same prompt generated alone. The server keeps no state between requests, so
//! replicas behind any load balancer scale it out.
//!
//! ```no_run
//! # async fn run(generator: nexttoken_generate::TextGenerator) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let options = nexttoken_server::ServerOptions::new("gpt2");
//! nexttoken_server::serve(listener, generator, options, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

mod api;
mod engine;
mod error;
mod metrics;
mod routes;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nexttoken_generate::TextGenerator;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use error::ApiError;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model's name in requests and `/v1/models`.
    pub model_name: String,
    /// Most rows (choices of all requests) generated at once.
    pub max_batch: usize,
    /// Most requests waiting for room in the batch; more get 429 with `Retry-After`.
    pub max_queue: usize,
    /// Requests must send `Authorization: Bearer <key>` (all but `/health`).
    pub api_key: Option<String>,
    /// Largest request body accepted (413 above).
    pub body_limit: usize,
    /// After a shutdown signal, how long running requests may take to finish.
    pub shutdown_grace: Duration,
}

impl ServerOptions {
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            max_batch: 16,
            max_queue: 64,
            api_key: None,
            body_limit: 1 << 20,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves until `shutdown` completes, then stops accepting connections and lets running
/// requests finish (at most `options.shutdown_grace`).
///
/// # Errors
/// If the listener fails or the generation thread cannot start.
pub async fn serve(
    listener: TcpListener,
    generator: TextGenerator,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = api::ModelLimits {
        name: options.model_name.clone(),
        context_length: generator.config.n_positions,
        vocab_size: generator.config.vocab_size,
        eos_token_id: generator.config.eos_token_id,
        max_batch: options.max_batch,
    };
    let tokenizer = generator.tokenizer;
    let metrics = Arc::new(metrics::Metrics::default());
    let (engine, thread) = engine::Engine::start(generator, options.max_batch, metrics.clone())?;
    let state = routes::AppState {
        engine,
        limits: Arc::new(limits),
        tokenizer,
        metrics,
        api_key: options.api_key.map(Arc::from),
        max_queue: options.max_queue as u64,
        body_limit: options.body_limit,
        started: routes::unix_time(),
        next_id: Arc::new(AtomicU64::new(0)),
    };
    let stopping = Arc::new(Notify::new());
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.notify_one();
        }
    };
    let server = axum::serve(listener, routes::router(state)).with_graceful_shutdown(signal);
    let grace = options.shutdown_grace;
    let outcome = tokio::select! {
        served = server => served,
        () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("requests still running {grace:?} after the shutdown signal: stopping anyway");
            Ok(())
        }
    };
    // The router (and with it the engine's handle) is gone: the thread ends once idle.
    tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    });
    outcome
}
