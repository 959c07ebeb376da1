//! One access-log line per completion request, as TGI's and vLLM's servers write them: the
//! request id, the status, prompt and completion tokens, time to first token, duration and how
//! the choices finished. Written when the answer is complete, or when the client went away (a
//! stream dropped before its end), through `tracing` (target `nexttoken::access`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::error::ApiError;

/// Marks a response whose request its handler logs, so the generic line is not written too.
#[derive(Debug, Clone, Copy)]
pub struct Logged;

#[derive(Debug)]
pub struct AccessLog {
    request_id: String,
    start: Instant,
    status: Option<StatusCode>,
    error: Option<String>,
    prompt_tokens: usize,
    completion_tokens: usize,
    first_token: Option<Duration>,
    finish: BTreeSet<&'static str>,
    complete: bool,
}

impl AccessLog {
    pub fn new(request_id: String) -> Self {
        Self {
            request_id,
            start: Instant::now(),
            status: None,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            first_token: None,
            finish: BTreeSet::new(),
            complete: false,
        }
    }

    pub fn status(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The request failed with `error` (before its answer started, or as its stream's last
    /// event).
    pub fn error(&mut self, error: &ApiError) {
        self.status.get_or_insert(error.status);
        self.error = Some(error.message.clone());
        self.complete = true;
    }

    pub fn prompt_tokens(&mut self, tokens: usize) {
        self.prompt_tokens = tokens;
    }

    pub fn token(&mut self) {
        self.completion_tokens += 1;
        self.first_token.get_or_insert_with(|| self.start.elapsed());
    }

    pub fn finish(&mut self, reason: &'static str) {
        self.finish.insert(reason);
    }

    /// A stream reached its end (not a client that went away).
    pub fn complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let status = self.status.map_or(0, |s| s.as_u16());
        let finish = if !self.complete {
            "cancelled".to_string()
        } else if self.finish.is_empty() {
            "-".to_string()
        } else {
            self.finish.iter().copied().collect::<Vec<_>>().join(",")
        };
        let duration_ms = self.start.elapsed().as_secs_f64() * 1e3;
        let ttft_ms = self.first_token.map(|d| d.as_secs_f64() * 1e3);
        let error = self.error.as_deref().unwrap_or("");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "nexttoken::access",
                    request_id = %self.request_id,
                    method = "POST",
                    path = "/v1/completions",
                    status,
                    prompt_tokens = self.prompt_tokens,
                    completion_tokens = self.completion_tokens,
                    ttft_ms,
                    duration_ms,
                    finish = %finish,
                    error,
                    "request"
                )
            };
        }
        if status >= 500 {
            line!(error);
        } else if status >= 400 {
            line!(warn);
        } else {
            line!(info);
        }
    }
}
