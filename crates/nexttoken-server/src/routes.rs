use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use nexttoken_tokenizer::Gpt2Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::{
    ChoiceLogprobs, Completion, CompletionChoice, CompletionRequest, Job, ModelCard, ModelLimits,
    ModelList, Usage, finish_reason,
};
use crate::engine::{Engine, Event, Submission};
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub limits: Arc<ModelLimits>,
    pub tokenizer: Gpt2Tokenizer,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<Arc<str>>,
    pub max_queue: u64,
    pub body_limit: usize,
    pub started: u64,
    pub next_id: Arc<AtomicU64>,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let protected = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let routes = Router::new()
        .merge(protected)
        .route("/health", get(health))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                ..ApiError::invalid(
                    None,
                    "no such endpoint: POST /v1/completions, GET /v1/models, /health, /metrics",
                )
            }
        });
    harden(routes, body_limit).with_state(state)
}

/// What every route gets: the body limit (413 above it) and a panic in a handler answered as a
/// 500 error object for that request alone, the server serving on.
fn harden<S: Clone + Send + Sync + 'static>(router: Router<S>, body_limit: usize) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("the server failed on this request (a panic; see its log)")
                .into_response()
        }))
}

/// `--api-key`: every request but `/health` (a load balancer's readiness probe) carries it.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if given != Some(key) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.limits.name.clone(),
            object: "model",
            created: state.started,
            owned_by: "nexttoken",
        }],
    })
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let metrics = state.metrics.clone();
    match accept(&state, body) {
        Ok((job, events)) => {
            let id = format!("cmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
            let header = Header {
                id,
                created: unix_time(),
                model: state.limits.name.clone(),
            };
            if job.stream {
                stream_response(header, job, events, state.tokenizer).into_response()
            } else {
                match collect(&header, &job, events, &state.tokenizer).await {
                    Ok(completion) => Json(completion).into_response(),
                    Err(error) => error.into_response(),
                }
            }
        }
        Err((error, outcome)) => {
            metrics.finished(outcome);
            error.into_response()
        }
    }
}

/// Parses, checks and queues a request.
fn accept(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Job, UnboundedReceiver<Event>), (ApiError, Outcome)> {
    let body = body.map_err(|rejection| {
        let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.body_limit)
        } else {
            ApiError::invalid(None, rejection.body_text())
        };
        (error, Outcome::Invalid)
    })?;
    let mut json = serde_json::Deserializer::from_slice(&body);
    let request: CompletionRequest = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let message = if e.inner().is_syntax() || e.inner().is_eof() {
            format!("the body is not valid JSON: {}", e.inner())
        } else {
            // The path names the field at fault: `max_tokens: invalid type: ...`.
            format!("the request does not match the completions API: {e}")
        };
        (ApiError::invalid(None, message), Outcome::Invalid)
    })?;
    let job = request
        .into_job(&state.limits, &state.tokenizer)
        .map_err(|e| (e, Outcome::Invalid))?;
    // Room in the queue, or a clean refusal the client can retry.
    let metrics = &state.metrics;
    if metrics
        .queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
            (queued < state.max_queue).then_some(queued + 1)
        })
        .is_err()
    {
        return Err((ApiError::busy(state.max_queue as usize), Outcome::Rejected));
    }
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let (events, receiver) = unbounded_channel();
    let submission = Submission {
        job: job.clone(),
        events,
        arrived: Instant::now(),
    };
    if state.engine.submit(submission).is_err() {
        metrics.queued.fetch_sub(1, Ordering::Relaxed);
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err((
            ApiError::unavailable("the server is shutting down"),
            Outcome::Rejected,
        ));
    }
    Ok((job, receiver))
}

struct Header {
    id: String,
    created: u64,
    model: String,
}

/// One choice's text and log-probabilities, as its tokens arrive.
struct ChoiceState {
    text: String,
    completion_tokens: usize,
    logprobs: Option<ChoiceLogprobs>,
    finish: Option<&'static str>,
}

impl ChoiceState {
    fn new(job: &Job, choice: usize) -> Self {
        Self {
            text: if job.echo {
                job.choices[choice].prompt.clone()
            } else {
                String::new()
            },
            completion_tokens: 0,
            logprobs: job.choices[choice]
                .config
                .logprobs
                .map(|_| ChoiceLogprobs::default()),
            finish: None,
        }
    }
}

fn usage(job: &Job, completion_tokens: usize) -> Usage {
    // Each distinct prompt counts once, however many choices it has (as OpenAI counts `n`).
    let mut prompt_tokens = 0;
    let mut previous: Option<&Vec<u32>> = None;
    for choice in &job.choices {
        if previous != Some(&choice.prompt_ids) {
            prompt_tokens += choice.prompt_ids.len();
        }
        previous = Some(&choice.prompt_ids);
    }
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

async fn collect(
    header: &Header,
    job: &Job,
    mut events: UnboundedReceiver<Event>,
    tokenizer: &Gpt2Tokenizer,
) -> Result<Completion, ApiError> {
    let mut choices: Vec<ChoiceState> = (0..job.choices.len())
        .map(|i| ChoiceState::new(job, i))
        .collect();
    while let Some(event) = events.recv().await {
        match event {
            Event::Failed(error) => return Err(error),
            Event::Token {
                choice,
                id,
                text,
                logprobs,
                finish,
            } => {
                let state = &mut choices[choice];
                if let (Some(all), Some(logprobs)) = (state.logprobs.as_mut(), logprobs.as_ref()) {
                    all.push(tokenizer, id, logprobs, state.text.len());
                }
                state.text.push_str(&text);
                state.completion_tokens += 1;
                state.finish = finish.map(finish_reason);
            }
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        return Err(ApiError::internal(
            "the generation ended before every choice finished",
        ));
    }
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    Ok(Completion {
        id: header.id.clone(),
        object: "text_completion",
        created: header.created,
        model: header.model.clone(),
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| CompletionChoice {
                text: choice.text,
                index,
                logprobs: choice.logprobs,
                finish_reason: choice.finish,
            })
            .collect(),
        usage: Some(usage(job, completion_tokens)),
    })
}

/// Server-sent events: a `text_completion` chunk per token, then (with
/// `stream_options.include_usage`) a chunk with the usage and no choices, then `[DONE]`.
fn stream_response(
    header: Header,
    job: Job,
    events: UnboundedReceiver<Event>,
    tokenizer: Gpt2Tokenizer,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    struct Streaming {
        header: Header,
        job: Job,
        events: Option<UnboundedReceiver<Event>>,
        tokenizer: Gpt2Tokenizer,
        /// Per choice: text sent so far (for logprobs' offsets) and whether it has started.
        sent: Vec<(usize, bool)>,
        completion_tokens: usize,
        done: bool,
    }
    let sent = vec![(0, false); job.choices.len()];
    let state = Streaming {
        header,
        job,
        events: Some(events),
        tokenizer,
        sent,
        completion_tokens: 0,
        done: false,
    };
    let chunks = stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let Some(events) = s.events.as_mut() else {
            s.done = true;
            return Some((Ok(SseEvent::default().data("[DONE]")), s));
        };
        let event = match events.recv().await {
            Some(Event::Token {
                choice,
                id,
                text,
                logprobs,
                finish,
            }) => {
                s.completion_tokens += 1;
                let (offset, started) = s.sent[choice];
                let mut piece = String::new();
                if !started && s.job.echo {
                    piece.push_str(&s.job.choices[choice].prompt);
                }
                let logprobs = logprobs.map(|logprobs| {
                    let mut all = ChoiceLogprobs::default();
                    all.push(&s.tokenizer, id, &logprobs, offset + piece.len());
                    all
                });
                piece.push_str(&text);
                s.sent[choice] = (offset + piece.len(), true);
                chunk(
                    &s.header,
                    vec![CompletionChoice {
                        text: piece,
                        index: choice,
                        logprobs,
                        finish_reason: finish.map(finish_reason),
                    }],
                    None,
                )
            }
            Some(Event::Failed(error)) => {
                s.events = None;
                SseEvent::default().data(error.body())
            }
            None => {
                s.events = None;
                if !s.job.include_usage {
                    s.done = true;
                    return Some((Ok(SseEvent::default().data("[DONE]")), s));
                }
                chunk(
                    &s.header,
                    Vec::new(),
                    Some(usage(&s.job, s.completion_tokens)),
                )
            }
        };
        Some((Ok(event), s))
    });
    Sse::new(chunks)
}

fn chunk(header: &Header, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> SseEvent {
    let completion = Completion {
        id: header.id.clone(),
        object: "text_completion",
        created: header.created,
        model: header.model.clone(),
        choices,
        usage,
    };
    SseEvent::default().data(serde_json::to_string(&completion).unwrap_or_default())
}

pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn a_bug() -> &'static str {
        panic!("a bug in a handler")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_serves_on() {
        let router = harden(
            Router::new()
                .route("/boom", get(a_bug))
                .route("/ok", get(|| async { "fine" })),
            1024,
        );
        let (status, body) = call(&router, "/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["type"], "server_error", "{body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("panic")
        );
        assert_eq!(call(&router, "/ok").await, (StatusCode::OK, "fine".into()));
        assert_eq!(
            call(&router, "/boom").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
