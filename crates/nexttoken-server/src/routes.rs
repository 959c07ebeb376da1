//! The HTTP side: routes, the API key, request ids and the access log, reading and admitting a
//! request. Its answer, whole or streamed, is `respond.rs`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::KeepAlive;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use nexttoken_tokenizer::Gpt2Tokenizer;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::{AccessLog, Logged};
use crate::admission::{Admission, Place};
use crate::api::{
    Checked, CompletionRequest, DetokenizeRequest, DetokenizeResponse, Job, ModelCard, ModelLimits,
    ModelList, TokenizeRequest, TokenizeResponse,
};
use crate::engine::{Engine, Event, Submission};
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};
use crate::respond::{Header, collect, stream_response, unix_time};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub limits: Arc<ModelLimits>,
    pub tokenizer: Gpt2Tokenizer,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    pub api_keys: Arc<[String]>,
    pub body_limit: usize,
    /// How long a request's body may take to arrive (408 after).
    pub body_timeout: Duration,
    /// How often an idle stream gets a comment.
    pub keep_alive: Duration,
    /// Tokenizing runs on blocking threads, at most this many at once.
    pub tokenizing: Arc<Semaphore>,
    pub alive: Arc<std::sync::atomic::AtomicBool>,
    pub started: u64,
}

pub fn router(state: AppState, cors_origins: &[HeaderValue]) -> Router {
    let body_limit = state.body_limit;
    let protected = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let routes = Router::new()
        .merge(protected)
        .route("/health", get(health))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::no_route(method.as_str(), uri.path())
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::wrong_method(method.as_str(), uri.path())
        })
        .layer(middleware::from_fn(trace_request));
    let routes = if cors_origins.is_empty() {
        routes
    } else {
        // Outermost, so that a browser's preflight (OPTIONS, no key) is answered here.
        routes.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(cors_origins.iter().cloned()))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, REQUEST_ID])
                .expose_headers([REQUEST_ID]),
        )
    };
    harden(routes, body_limit).with_state(state)
}

/// What every route gets: the body limit (413 above it) and a panic in a handler answered as a
/// 500 error object for that request alone, the server serving on.
fn harden<S: Clone + Send + Sync + 'static>(router: Router<S>, body_limit: usize) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::internal("the server failed on this request (a panic; its log has it)")
                .into_response()
        }))
}

/// The request's id: the client's `X-Request-Id` when it is a sane one, else a new one. It goes
/// back in the response's `X-Request-Id`, and every log line of the request carries it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn of(request: &Request) -> Self {
        let given = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()));
        Self(given.map_or_else(new_id, str::to_string))
    }
}

/// 32 random hex digits: ids that do not repeat across restarts and replicas.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Gives every request its id, and logs one line for every request that its handler does not
/// log itself (the completions' lines carry tokens and timings).
async fn trace_request(mut request: Request, next: Next) -> Response {
    let id = RequestId::of(&request);
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if response.extensions().get::<Logged>().is_none() {
        let status = response.status().as_u16();
        let millis = start.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            target: "nexttoken::access",
            request_id = %id.0, %method, path, status, duration_ms = millis,
            "request"
        );
    }
    response
}

/// `--api-key`: every request but `/health` (a load balancer's readiness probe) carries one of
/// the keys, as `Authorization: Bearer KEY` (the scheme in any case, as RFC 7235 has it).
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.api_keys.is_empty() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        let known = given.is_some_and(|given| {
            // Every key compared in full: the time says nothing of which key was close.
            state.api_keys.iter().fold(false, |found, key| {
                found | same_bytes(key.as_bytes(), given.as_bytes())
            })
        });
        if !known {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Equality whose time depends on the lengths only, not on where the bytes first differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for index in 0..a.len().max(b.len()) {
        let x = a.get(index).copied().unwrap_or(0);
        let y = b.get(index).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    std::hint::black_box(difference) == 0
}

/// 200 while the generation thread runs; 503 once it has stopped, so that a load balancer
/// takes the replica out instead of sending it requests that fail.
async fn health(State(state): State<AppState>) -> Response {
    if state.alive.load(std::sync::atomic::Ordering::Acquire) {
        Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        ApiError::unavailable("the generation thread has stopped: restart the server")
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.admission.counts()),
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
            max_model_len: state.limits.context_length,
        }],
    })
}

/// The body, read within the body timeout and the size limit.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, ApiError> {
    let limit = state.body_limit;
    let body = request.into_body();
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::timeout(format!(
            "the request body did not arrive within {} s",
            state.body_timeout.as_secs_f64()
        ))),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid(None, format!("reading the request body failed: {e}"))
            })
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// JSON into `T`; the error names the field at fault as `param`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            return ApiError::invalid(None, format!("the body is not valid JSON: {}", e.inner()));
        }
        let field = e.path().iter().find_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        });
        let message = match &field {
            Some(field) => format!("{field}: {}", e.inner()),
            None => format!("the request does not match the API: {}", e.inner()),
        };
        ApiError::invalid(field.as_deref(), message)
    })
}

/// Runs `work` on a blocking thread, at most as many at once as the machine has cores, so that
/// a flood of long prompts neither stalls the async runtime nor crowds out the engine.
async fn on_blocking_thread<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = state
        .tokenizing
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::internal("tokenizing failed (a panic; the server's log has it)"))
}

async fn tokenize(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let body = read_body(&state, request).await?;
    let request: TokenizeRequest = parse(&body)?;
    check_model(&state, request.model.as_deref())?;
    let tokenizer = state.tokenizer;
    let tokens = on_blocking_thread(&state, move || tokenizer.encode(&request.prompt)).await?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.limits.context_length,
        tokens,
    })
    .into_response())
}

async fn detokenize(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let body = read_body(&state, request).await?;
    let request: DetokenizeRequest = parse(&body)?;
    check_model(&state, request.model.as_deref())?;
    let tokenizer = state.tokenizer;
    let prompt = on_blocking_thread(&state, move || tokenizer.decode(&request.tokens))
        .await?
        .map_err(|e| ApiError::invalid(Some("tokens"), e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }).into_response())
}

fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(model) if model != state.limits.name => {
            Err(ApiError::model_not_found(model, &state.limits.name))
        }
        _ => Ok(()),
    }
}

async fn completions(State(state): State<AppState>, request: Request) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(|| RequestId(new_id()));
    let mut log = AccessLog::new(id.0);
    let response = match accept(&state, request, &mut log).await {
        Ok((job, events)) => {
            let header = Header {
                id: format!("cmpl-{}", new_id()),
                created: unix_time(),
                model: state.limits.name.clone(),
            };
            if job.stream {
                log.status(StatusCode::OK);
                let body = stream_response(header, job, events, state.tokenizer, log)
                    .keep_alive(KeepAlive::new().interval(state.keep_alive));
                body.into_response()
            } else {
                let answer = collect(&header, &job, events, &state.tokenizer, &mut log).await;
                match answer {
                    Ok(completion) => {
                        log.status(StatusCode::OK);
                        log.complete();
                        Json(completion).into_response()
                    }
                    Err(error) => {
                        log.error(&error);
                        error.into_response()
                    }
                }
            }
        }
        Err((error, outcome)) => {
            state.metrics.finished(outcome);
            log.error(&error);
            error.into_response()
        }
    };
    let mut response = response;
    response.extensions_mut().insert(Logged);
    response
}

/// A place in the batch or the queue, held from admission until the request reaches the
/// engine, and given back if it never does.
struct Reservation<'a> {
    admission: &'a Admission,
    metrics: &'a Metrics,
    place: Option<Place>,
    rows: usize,
}

impl Reservation<'_> {
    /// Gives the place back (the request failed a check); the place it was.
    fn release(&mut self) -> Option<Place> {
        let place = self.place.take();
        match place {
            Some(Place::Batch) => self.admission.release(self.rows),
            Some(Place::Queue) => self.admission.leave_queue(),
            None => {}
        }
        place
    }
}

impl Drop for Reservation<'_> {
    /// Still held when dropped: the client went away while its prompt was tokenized (the
    /// handler's future was dropped), which counts as a cancellation.
    fn drop(&mut self) {
        if let Some(place) = self.release() {
            self.metrics.finished(Outcome::Cancelled);
            if place == Place::Queue {
                self.metrics
                    .abandoned_in_queue
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Reads, checks and queues a request: the cheap checks first, then a place in the batch or
/// the queue, then the prompts tokenized on a blocking thread and checked against the context.
async fn accept(
    state: &AppState,
    request: Request,
    log: &mut AccessLog,
) -> Result<(Job, UnboundedReceiver<Event>), (ApiError, Outcome)> {
    let invalid = |error| (error, Outcome::Invalid);
    let body = read_body(state, request).await.map_err(invalid)?;
    let request: CompletionRequest = parse(&body).map_err(invalid)?;
    drop(body);
    let checked: Checked = request.check(&state.limits).map_err(invalid)?;
    let rows = checked.rows();
    let place = state
        .admission
        .enter(rows)
        .map_err(|e| (e, Outcome::Rejected))?;
    let mut reservation = Reservation {
        admission: &state.admission,
        metrics: &state.metrics,
        place: Some(place),
        rows,
    };
    let (limits, tokenizer) = (state.limits.clone(), state.tokenizer);
    let tokenized = on_blocking_thread(state, move || checked.into_job(&limits, &tokenizer)).await;
    let job = match tokenized {
        Ok(Ok(job)) => job,
        Ok(Err(error)) => {
            reservation.release();
            return Err((error, Outcome::Invalid));
        }
        Err(error) => {
            reservation.release();
            return Err((error, Outcome::Failed));
        }
    };
    log.prompt_tokens(job.prompt_tokens());
    let in_flight = &state.metrics.in_flight;
    in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unbounded, so that the engine never waits on a slow reader (it steps every row at once);
    // a request's events are bounded all the same: one per generated token of each of its
    // choices (`max_tokens`, within the context, times `n`) and one to end it, a few hundred
    // bytes each (tests/server.rs: a client that reads nothing).
    let (events, receiver) = unbounded_channel();
    let submission = Submission {
        job: job.clone(),
        place,
        events,
        arrived: Instant::now(),
    };
    if state.engine.submit(submission).is_err() {
        in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        reservation.release();
        return Err((
            ApiError::unavailable("the generation thread has stopped: the server is shutting down"),
            Outcome::Rejected,
        ));
    }
    // The engine gives the place back from now on.
    reservation.place = None;
    Ok((job, receiver))
}

/// The body of a response, for tests.
#[cfg(test)]
pub async fn body_text(response: Response) -> String {
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&body).into_owned()
}

/// For tests: `body` is OpenAI's error object for a server error that names a panic.
#[cfg(test)]
pub fn assert_panic_error(body: &str) {
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{body}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("panic"), "{body}");
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (status, body_text(response).await)
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
        assert_panic_error(&body);
        assert_eq!(call(&router, "/ok").await, (StatusCode::OK, "fine".into()));
        assert_eq!(
            call(&router, "/boom").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn keys_compare_equal_only_when_equal() {
        assert!(same_bytes(b"sesame", b"sesame"));
        for other in [&b"sesamE"[..], b"sesam", b"sesame!", b"", b"Sesame"] {
            assert!(!same_bytes(b"sesame", other), "{other:?}");
        }
        assert!(same_bytes(b"", b""));
    }
}
