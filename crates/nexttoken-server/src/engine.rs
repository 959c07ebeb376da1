//! The generation thread: one [`TextSession`] that every request's rows join and leave
//! (continuous batching). Requests come in over a channel with their place
//! ([`crate::admission`]); each row's tokens go back over its request's own channel, and a
//! request whose channel is closed (the client went away) leaves before the next step, from the
//! batch or from the queue.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nexttoken_generate::{FinishReason, Logprobs, RowId, TextGenerator, TextSession};
use tokio::sync::mpsc::UnboundedSender;

use crate::admission::{Admission, Place};
use crate::api::Job;
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

/// What a request hears from the engine.
#[derive(Debug)]
pub enum Event {
    /// Choice `choice`'s prompt, scored: each token's log-probability after those before it
    /// (one fewer than the prompt's tokens).
    Prompt {
        choice: usize,
        logprobs: Vec<Logprobs>,
    },
    /// Choice `choice` got a token and the text it completed (possibly empty).
    Token {
        choice: usize,
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
        finish: Option<FinishReason>,
    },
    /// Choice `choice` ended without a token: it only scored its prompt, or it ran out of time.
    Ended { choice: usize, reason: Ended },
    /// The request could not run or go on; nothing more follows.
    Failed(ApiError),
}

/// Why a choice ended without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `max_tokens` 0: the prompt was scored and nothing generated.
    Scored,
    /// It generated for longer than `--request-time-limit`.
    TimeLimit,
}

pub struct Submission {
    pub job: Job,
    pub place: Place,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// The engine's settings and the state it shares with the handlers.
pub struct Shared {
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    /// Set while the generation thread runs: `/health` answers 503 once it has stopped.
    pub alive: Arc<AtomicBool>,
    /// Set when the shutdown grace has run out: running and waiting requests end now.
    pub abort: Arc<AtomicBool>,
    pub time_limit: Option<Duration>,
}

/// The handle requests are submitted through; dropping every clone stops the thread once its
/// running requests have finished.
#[derive(Clone)]
pub struct Engine {
    submissions: Sender<Submission>,
}

impl Engine {
    /// Starts the generation thread on `generator`.
    pub fn start(
        generator: TextGenerator,
        shared: Shared,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (submissions, incoming) = channel();
        shared.alive.store(true, Ordering::Release);
        let thread = std::thread::Builder::new()
            .name("nexttoken-engine".into())
            .spawn(move || {
                // Cleared however the thread ends, a panic outside a step included.
                struct Alive(Arc<AtomicBool>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _alive = Alive(shared.alive.clone());
                run(&generator, &incoming, &shared);
            })?;
        Ok((Self { submissions }, thread))
    }

    /// Hands a request to the engine; an error if the engine has stopped.
    pub fn submit(&self, submission: Submission) -> Result<(), Submission> {
        self.submissions.send(submission).map_err(|e| e.0)
    }
}

/// A request with rows in the session.
struct Running {
    events: UnboundedSender<Event>,
    rows: Vec<RowId>,
    unfinished: usize,
    arrived: Instant,
    started: Instant,
    answered: bool,
}

fn run(generator: &TextGenerator, incoming: &Receiver<Submission>, shared: &Shared) {
    let metrics = &shared.metrics;
    let admission = &shared.admission;
    let mut session = generator.session();
    let mut waiting: VecDeque<Submission> = VecDeque::new();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut owners: HashMap<RowId, (u64, usize)> = HashMap::new();
    let mut next_request = 0u64;
    loop {
        // Idle: wait for work (waking now and then, so a closed channel or the end of the
        // shutdown grace is noticed).
        if running.is_empty() && waiting.is_empty() {
            if shared.abort.load(Ordering::Acquire) {
                return;
            }
            match incoming.recv_timeout(Duration::from_millis(200)) {
                Ok(submission) => waiting.push_back(submission),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        waiting.extend(incoming.try_iter());

        if shared.abort.load(Ordering::Acquire) {
            let error = ApiError::unavailable(
                "the server is shutting down and its grace period for running requests ended",
            );
            for submission in waiting.drain(..) {
                if submission.place == Place::Queue {
                    admission.leave_queue();
                } else {
                    admission.release(submission.job.rows());
                }
                let _ = submission.events.send(Event::Failed(error.clone()));
                finish(metrics, Outcome::Failed);
            }
            for (_, request) in running.drain() {
                for row in &request.rows {
                    session.cancel(*row);
                }
                admission.release(request.unfinished);
                let _ = request.events.send(Event::Failed(error.clone()));
                finish(metrics, Outcome::Failed);
            }
            return;
        }

        // Queued requests whose client went away give their place back now, not when they
        // reach the head of the queue.
        waiting.retain(|submission| {
            let gone = submission.events.is_closed();
            if gone {
                if submission.place == Place::Queue {
                    admission.leave_queue();
                    metrics.abandoned_in_queue.fetch_add(1, Ordering::Relaxed);
                } else {
                    admission.release(submission.job.rows());
                }
                finish(metrics, Outcome::Cancelled);
            }
            !gone
        });

        // Admit, in order: requests that took a place in the batch, and queued requests while
        // their rows fit.
        let mut index = 0;
        while index < waiting.len() {
            let submission = &waiting[index];
            let admitted = match submission.place {
                Place::Batch => true,
                // Only the first queued request may move up: no overtaking.
                Place::Queue => {
                    let first_queued = waiting
                        .iter()
                        .position(|s| s.place == Place::Queue)
                        .is_some_and(|first| first == index);
                    first_queued && admission.promote(submission.job.rows())
                }
            };
            if !admitted {
                index += 1;
                continue;
            }
            let Some(submission) = waiting.remove(index) else {
                break;
            };
            let id = next_request;
            next_request += 1;
            let rows = submission.job.rows();
            match admit(generator, &mut session, submission, metrics) {
                Some(request) if request.unfinished == 0 => finish(metrics, Outcome::Completed),
                Some(request) => {
                    for (choice, row) in request.rows.iter().enumerate() {
                        owners.insert(*row, (id, choice));
                    }
                    running.insert(id, request);
                }
                None => admission.release(rows),
            }
        }

        // A request whose client went away, or that ran out of time, leaves before the next
        // step.
        let leaving: Vec<(u64, bool)> = running
            .iter()
            .filter_map(|(&id, request)| {
                let gone = request.events.is_closed();
                let late = shared
                    .time_limit
                    .is_some_and(|limit| request.started.elapsed() > limit);
                (gone || late).then_some((id, gone))
            })
            .collect();
        for (id, gone) in leaving {
            let Some(request) = running.remove(&id) else {
                continue;
            };
            for row in &request.rows {
                if let Some((_, choice)) = owners.remove(row) {
                    session.cancel(*row);
                    let _ = request.events.send(Event::Ended {
                        choice,
                        reason: Ended::TimeLimit,
                    });
                }
            }
            admission.release(request.unfinished);
            finish(
                metrics,
                if gone {
                    Outcome::Cancelled
                } else {
                    Outcome::Completed
                },
            );
        }
        let rows = session.live_rows();
        metrics.batch_rows.store(rows as u64, Ordering::Relaxed);
        if running.is_empty() {
            continue;
        }

        let start = Instant::now();
        let step = match catch_unwind(AssertUnwindSafe(|| session.step())) {
            Ok(Ok(step)) => step,
            failure => {
                let message = match failure {
                    Ok(Err(e)) => format!("the generation failed: {e}"),
                    _ => "the generation failed (a panic in the engine; the server's log has it)"
                        .into(),
                };
                tracing::error!("{message}");
                // The session may be inconsistent: fail what runs and start a fresh one.
                for (_, request) in running.drain() {
                    admission.release(request.unfinished);
                    let _ = request
                        .events
                        .send(Event::Failed(ApiError::internal(message.clone())));
                    finish(metrics, Outcome::Failed);
                }
                owners.clear();
                session = generator.session();
                continue;
            }
        };
        metrics.token_latency.observe(start.elapsed());
        metrics.step(rows);
        metrics
            .generated_tokens
            .fetch_add(step.chunks.len() as u64, Ordering::Relaxed);
        for chunk in step.chunks {
            let Some(&(id, choice)) = owners.get(&chunk.row) else {
                continue;
            };
            let Some(request) = running.get_mut(&id) else {
                continue;
            };
            if !request.answered {
                request.answered = true;
                metrics
                    .time_to_first_token
                    .observe(request.arrived.elapsed());
            }
            let finished = chunk.finish.is_some();
            if finished {
                // Given back before the client hears of it: its next request finds the room.
                admission.release(1);
            }
            // A closed channel is noticed before the next step.
            let _ = request.events.send(Event::Token {
                choice,
                id: chunk.id,
                text: chunk.text,
                logprobs: chunk.logprobs,
                finish: chunk.finish,
            });
            if finished {
                owners.remove(&chunk.row);
                request.unfinished -= 1;
                if request.unfinished == 0 {
                    // Counted before the channel closes: the client may read /metrics as soon as
                    // its answer is complete.
                    finish(metrics, Outcome::Completed);
                    running.remove(&id);
                }
            }
        }
    }
}

/// Scores the prompts that ask for it, then adds every generating choice to the session. On
/// an error the request has been told, and whatever was added is taken back.
fn admit(
    generator: &TextGenerator,
    session: &mut TextSession,
    submission: Submission,
    metrics: &Metrics,
) -> Option<Running> {
    let Submission {
        job,
        events,
        arrived,
        ..
    } = submission;
    let fail = |error: ApiError, outcome| {
        let _ = events.send(Event::Failed(error));
        finish(metrics, outcome);
    };
    metrics
        .prompt_tokens
        .fetch_add(job.prompt_tokens() as u64, Ordering::Relaxed);
    if job.score_prompt {
        let mut scored: Option<(&Vec<u32>, Vec<Logprobs>)> = None;
        for (choice, entry) in job.choices.iter().enumerate() {
            let top = entry.config.logprobs.unwrap_or(0);
            if scored
                .as_ref()
                .is_none_or(|(ids, _)| *ids != &entry.prompt_ids)
            {
                let score =
                    catch_unwind(AssertUnwindSafe(|| generator.score(&entry.prompt_ids, top)));
                match score {
                    Ok(Ok(logprobs)) => scored = Some((&entry.prompt_ids, logprobs)),
                    failure => {
                        let message = match failure {
                            Ok(Err(e)) => format!("scoring the prompt failed: {e}"),
                            _ => "scoring the prompt failed (a panic in the engine)".into(),
                        };
                        tracing::error!("{message}");
                        fail(ApiError::internal(message), Outcome::Failed);
                        return None;
                    }
                }
            }
            if let Some((_, logprobs)) = &scored {
                let _ = events.send(Event::Prompt {
                    choice,
                    logprobs: logprobs.clone(),
                });
            }
        }
    }
    let mut rows = Vec::with_capacity(job.choices.len());
    for (choice, entry) in job.choices.iter().enumerate() {
        if entry.config.max_new_tokens == 0 {
            let _ = events.send(Event::Ended {
                choice,
                reason: Ended::Scored,
            });
            continue;
        }
        match session.add_ids(entry.prompt_ids.clone(), &entry.config, &job.stop) {
            Ok(row) => rows.push(row),
            Err(e) => {
                for row in rows {
                    session.cancel(row);
                }
                fail(ApiError::invalid(None, e.to_string()), Outcome::Invalid);
                return None;
            }
        }
    }
    let now = Instant::now();
    Some(Running {
        events,
        unfinished: rows.len(),
        rows,
        arrived,
        started: now,
        answered: false,
    })
}

fn finish(metrics: &Metrics, outcome: Outcome) {
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics.finished(outcome);
}
