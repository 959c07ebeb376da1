//! Turning the engine's events into OpenAI's answers: one JSON object once every choice has
//! ended ([`collect`]), or server-sent events as they come ([`stream_response`]).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::stream::{self, Stream};
use nexttoken_generate::Logprobs;
use nexttoken_tokenizer::Gpt2Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::access::AccessLog;
use crate::api::{ChoiceLogprobs, Completion, CompletionChoice, Job, Usage, finish_reason};
use crate::engine::{Ended, Event};
use crate::error::ApiError;

/// What every chunk and answer of one completion repeats.
pub(crate) struct Header {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
}

/// One choice's progress, turning the engine's events into the pieces of text and
/// log-probabilities a client gets, streamed or all at once.
#[derive(Default)]
struct ChoiceProgress {
    /// Characters of the choice's text so far, for `text_offset`.
    chars: usize,
    /// Whether the prompt has been put in front (`echo`).
    echoed: bool,
}

impl ChoiceProgress {
    /// The piece of choice `index` that `event` adds, and whether it was a generated token.
    fn piece(
        &mut self,
        job: &Job,
        index: usize,
        event: Event,
        tokenizer: &Gpt2Tokenizer,
    ) -> CompletionChoice {
        let choice = &job.choices[index];
        let wants_logprobs = choice.config.logprobs.is_some();
        let mut text = String::new();
        let mut logprobs = wants_logprobs.then(ChoiceLogprobs::default);
        if job.echo && !self.echoed {
            self.echoed = true;
            if let (
                Event::Prompt {
                    logprobs: scored, ..
                },
                Some(all),
            ) = (&event, logprobs.as_mut())
            {
                self.push_prompt(all, &choice.prompt_ids, scored, tokenizer);
            }
            text.push_str(&choice.prompt);
            self.chars = choice.prompt.chars().count();
        }
        let finish = match event {
            Event::Token {
                id,
                text: piece,
                logprobs: token_logprobs,
                finish,
                ..
            } => {
                if let (Some(all), Some(token_logprobs)) = (logprobs.as_mut(), &token_logprobs) {
                    all.push(tokenizer, id, Some(token_logprobs), self.chars);
                }
                self.chars += piece.chars().count();
                text.push_str(&piece);
                finish.map(finish_reason)
            }
            Event::Ended {
                reason: Ended::Scored | Ended::TimeLimit,
                ..
            } => Some("length"),
            Event::Prompt { .. } | Event::Failed(_) => None,
        };
        CompletionChoice {
            text,
            index,
            logprobs,
            finish_reason: finish,
        }
    }

    /// A scored prompt's tokens: the first with `null`s, the rest with their log-probabilities.
    fn push_prompt(
        &self,
        all: &mut ChoiceLogprobs,
        ids: &[u32],
        scored: &[Logprobs],
        tokenizer: &Gpt2Tokenizer,
    ) {
        let mut stream = tokenizer.stream();
        let mut offset = 0;
        for (position, &id) in ids.iter().enumerate() {
            let logprobs = position.checked_sub(1).and_then(|i| scored.get(i));
            all.push(tokenizer, id, logprobs, offset);
            offset += stream.next_token(id).map_or(0, |text| text.chars().count());
        }
    }
}

fn usage(job: &Job, completion_tokens: usize) -> Usage {
    let prompt_tokens = job.prompt_tokens();
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

/// The choice an event is for, or the error it reports.
fn choice_of(event: &Event) -> Result<usize, &ApiError> {
    match event {
        Event::Prompt { choice, .. }
        | Event::Token { choice, .. }
        | Event::Ended { choice, .. } => Ok(*choice),
        Event::Failed(error) => Err(error),
    }
}

pub(crate) async fn collect(
    header: &Header,
    job: &Job,
    mut events: UnboundedReceiver<Event>,
    tokenizer: &Gpt2Tokenizer,
    log: &mut AccessLog,
) -> Result<Completion, ApiError> {
    let mut progress: Vec<ChoiceProgress> = (0..job.choices.len())
        .map(|_| ChoiceProgress::default())
        .collect();
    let mut choices: Vec<CompletionChoice> = (0..job.choices.len())
        .map(|index| CompletionChoice {
            text: String::new(),
            index,
            logprobs: job.choices[index]
                .config
                .logprobs
                .map(|_| ChoiceLogprobs::default()),
            finish_reason: None,
        })
        .collect();
    let mut completion_tokens = 0;
    while let Some(event) = events.recv().await {
        let index = choice_of(&event).map_err(Clone::clone)?;
        if matches!(event, Event::Token { .. }) {
            completion_tokens += 1;
            log.token();
        }
        let piece = progress[index].piece(job, index, event, tokenizer);
        let choice = &mut choices[index];
        choice.text.push_str(&piece.text);
        if let (Some(all), Some(more)) = (choice.logprobs.as_mut(), piece.logprobs) {
            all.extend(more);
        }
        if let Some(reason) = piece.finish_reason {
            choice.finish_reason = Some(reason);
            log.finish(reason);
        }
    }
    if choices.iter().any(|c| c.finish_reason.is_none()) {
        return Err(ApiError::internal(
            "the generation ended before every choice finished",
        ));
    }
    Ok(Completion {
        id: header.id.clone(),
        object: "text_completion",
        created: header.created,
        model: header.model.clone(),
        choices,
        usage: Some(usage(job, completion_tokens)),
    })
}

/// Server-sent events: a `text_completion` chunk per token, then (with
/// `stream_options.include_usage`) a chunk with the usage and no choices, then `[DONE]`.
pub(crate) fn stream_response(
    header: Header,
    job: Job,
    events: UnboundedReceiver<Event>,
    tokenizer: Gpt2Tokenizer,
    log: AccessLog,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    struct Streaming {
        header: Header,
        job: Job,
        events: Option<UnboundedReceiver<Event>>,
        tokenizer: Gpt2Tokenizer,
        progress: Vec<ChoiceProgress>,
        completion_tokens: usize,
        done: bool,
        /// Logs the request's line when the stream ends or its client goes away.
        log: AccessLog,
    }
    let progress = (0..job.choices.len())
        .map(|_| ChoiceProgress::default())
        .collect();
    let state = Streaming {
        header,
        job,
        events: Some(events),
        tokenizer,
        progress,
        completion_tokens: 0,
        done: false,
        log,
    };
    let chunks = stream::unfold(state, |mut s| async move {
        if s.done {
            s.log.complete();
            return None;
        }
        let Some(events) = s.events.as_mut() else {
            s.done = true;
            return Some((Ok(SseEvent::default().data("[DONE]")), s));
        };
        let event = match events.recv().await {
            Some(Event::Failed(error)) => {
                s.events = None;
                s.log.error(&error);
                SseEvent::default().data(error.body())
            }
            Some(event) => {
                let index = choice_of(&event).unwrap_or_default();
                if matches!(event, Event::Token { .. }) {
                    s.completion_tokens += 1;
                    s.log.token();
                }
                let piece = s.progress[index].piece(&s.job, index, event, &s.tokenizer);
                if let Some(reason) = piece.finish_reason {
                    s.log.finish(reason);
                }
                chunk(&s.header, vec![piece], None)
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
