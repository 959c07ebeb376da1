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

use nexttoken_generate::{
    FinishReason, KvCache, Logprobs, RowId, TextChunk, TextGenerator, TextSession,
};
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
    /// See [`crate::ServerOptions::prefill_chunk`].
    pub prefill_chunk: usize,
    /// The KV cache's bound, in blocks, if any.
    pub kv_cache_blocks: Option<usize>,
    /// See [`crate::ServerOptions::prefix_caching`].
    pub prefix_caching: bool,
    /// Tests set it to make the next step panic, as a bug in a kernel would.
    #[cfg(test)]
    pub fail_next_step: Arc<AtomicBool>,
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
    let mut batch = Batch::new(generator, shared);
    loop {
        if batch.is_idle() && !batch.wait_for_work(incoming) {
            return;
        }
        batch.waiting.extend(incoming.try_iter());
        if shared.abort.load(Ordering::Acquire) {
            batch.fail_everything();
            return;
        }
        batch.drop_abandoned_in_queue();
        batch.admit_waiting();
        batch.drop_leaving();
        batch.step();
    }
}

/// The generation thread's state: the session every running request's rows are in, the
/// requests waiting for a place, and which request and choice each row answers.
struct Batch<'g> {
    generator: &'g TextGenerator,
    shared: &'g Shared,
    session: TextSession<'g>,
    waiting: VecDeque<Submission>,
    running: HashMap<u64, Running>,
    owners: HashMap<RowId, (u64, usize)>,
    next_request: u64,
}

/// A session with the server's prompt chunks and cache bound.
fn fresh_session<'g>(generator: &'g TextGenerator, shared: &Shared) -> TextSession<'g> {
    let mut cache = match shared.kv_cache_blocks {
        Some(blocks) => KvCache::with_max_blocks(blocks),
        None => KvCache::new(),
    };
    if !shared.prefix_caching {
        cache = cache.without_prefix_sharing();
    }
    generator
        .session()
        .with_prefill_chunk(shared.prefill_chunk)
        .with_kv_cache(cache)
}

impl<'g> Batch<'g> {
    fn new(generator: &'g TextGenerator, shared: &'g Shared) -> Self {
        Self {
            generator,
            shared,
            session: fresh_session(generator, shared),
            waiting: VecDeque::new(),
            running: HashMap::new(),
            owners: HashMap::new(),
            next_request: 0,
        }
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Waits for a request, waking now and then so that a closed channel or the end of the
    /// shutdown grace is noticed; false when the thread should end.
    fn wait_for_work(&mut self, incoming: &Receiver<Submission>) -> bool {
        loop {
            if self.shared.abort.load(Ordering::Acquire) {
                return false;
            }
            match incoming.recv_timeout(Duration::from_millis(200)) {
                Ok(submission) => {
                    self.waiting.push_back(submission);
                    return true;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// The shutdown grace ran out: every waiting and running request ends with an error.
    fn fail_everything(&mut self) {
        let (admission, metrics) = (&self.shared.admission, &self.shared.metrics);
        let error = ApiError::unavailable(
            "the server is shutting down and its grace period for running requests ended",
        );
        for submission in self.waiting.drain(..) {
            if submission.place == Place::Queue {
                admission.leave_queue();
            } else {
                admission.release(submission.job.rows());
            }
            let _ = submission.events.send(Event::Failed(error.clone()));
            finish(metrics, Outcome::Failed);
        }
        for (_, request) in self.running.drain() {
            for row in &request.rows {
                self.session.cancel(*row);
            }
            admission.release(request.unfinished);
            let _ = request.events.send(Event::Failed(error.clone()));
            finish(metrics, Outcome::Failed);
        }
    }

    /// Waiting requests whose client went away give their place back now, not when they reach
    /// the head of the queue.
    fn drop_abandoned_in_queue(&mut self) {
        let (admission, metrics) = (&self.shared.admission, &self.shared.metrics);
        self.waiting.retain(|submission| {
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
    }

    /// Admits, in order, the requests that took a place in the batch, and queued requests
    /// while their rows fit: only the first queued request may move up, so none overtakes.
    fn admit_waiting(&mut self) {
        let (admission, metrics) = (&self.shared.admission, &self.shared.metrics);
        let mut index = 0;
        while index < self.waiting.len() {
            let submission = &self.waiting[index];
            let admitted = match submission.place {
                Place::Batch => true,
                Place::Queue => {
                    let first_queued = self
                        .waiting
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
            let Some(submission) = self.waiting.remove(index) else {
                break;
            };
            let id = self.next_request;
            self.next_request += 1;
            let rows = submission.job.rows();
            match admit(self.generator, &mut self.session, submission, metrics) {
                Some(request) if request.unfinished == 0 => finish(metrics, Outcome::Completed),
                Some(request) => {
                    for (choice, row) in request.rows.iter().enumerate() {
                        self.owners.insert(*row, (id, choice));
                    }
                    self.running.insert(id, request);
                }
                None => admission.release(rows),
            }
        }
    }

    /// A running request whose client went away, or that ran out of time, leaves before the
    /// next step.
    fn drop_leaving(&mut self) {
        let (admission, metrics) = (&self.shared.admission, &self.shared.metrics);
        let time_limit = self.shared.time_limit;
        let leaving: Vec<(u64, bool)> = self
            .running
            .iter()
            .filter_map(|(&id, request)| {
                let gone = request.events.is_closed();
                let late = time_limit.is_some_and(|limit| request.started.elapsed() > limit);
                (gone || late).then_some((id, gone))
            })
            .collect();
        for (id, gone) in leaving {
            let Some(request) = self.running.remove(&id) else {
                continue;
            };
            for row in &request.rows {
                if let Some((_, choice)) = self.owners.remove(row) {
                    self.session.cancel(*row);
                    let _ = request.events.send(Event::Ended {
                        choice,
                        reason: Ended::TimeLimit,
                    });
                }
            }
            admission.release(request.unfinished);
            let outcome = if gone {
                Outcome::Cancelled
            } else {
                Outcome::Completed
            };
            finish(metrics, outcome);
        }
    }

    /// One step of every running row, each chunk sent to its request. A failed or panicking
    /// step fails what runs and starts a fresh session (the old one may be inconsistent).
    fn step(&mut self) {
        let metrics = &self.shared.metrics;
        let rows = self.session.live_rows();
        metrics.batch_rows.store(rows as u64, Ordering::Relaxed);
        if self.running.is_empty() {
            return;
        }
        let start = Instant::now();
        let step = match catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if self.shared.fail_next_step.swap(false, Ordering::AcqRel) {
                panic!("a step failing on purpose (the tests' hook)");
            }
            self.session.step()
        })) {
            Ok(Ok(step)) => step,
            failure => {
                let message = match failure {
                    Ok(Err(e)) => format!("the generation failed: {e}"),
                    _ => "the generation failed (a panic in the engine; the server's log has it)"
                        .into(),
                };
                tracing::error!("{message}");
                for (_, request) in self.running.drain() {
                    self.shared.admission.release(request.unfinished);
                    let _ = request
                        .events
                        .send(Event::Failed(ApiError::internal(message.clone())));
                    finish(metrics, Outcome::Failed);
                }
                self.owners.clear();
                self.session = fresh_session(self.generator, self.shared);
                return;
            }
        };
        metrics.token_latency.observe(start.elapsed());
        // Rows that got a token: a row still reading its prompt, or waiting for the cache's
        // blocks, is in the session but got none.
        metrics.step(step.chunks.len());
        metrics
            .generated_tokens
            .fetch_add(step.chunks.len() as u64, Ordering::Relaxed);
        for chunk in step.chunks {
            self.dispatch(chunk);
        }
        // After the step: the rows that finished in it have given their blocks back.
        metrics.record_kv_cache(self.session.kv_cache_blocks());
    }

    /// Sends `chunk` to the request whose row it is, and ends the choice (and the request,
    /// after its last) where the row finished.
    fn dispatch(&mut self, chunk: TextChunk) {
        let metrics = &self.shared.metrics;
        let Some(&(id, choice)) = self.owners.get(&chunk.row) else {
            return;
        };
        let Some(request) = self.running.get_mut(&id) else {
            return;
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
            self.shared.admission.release(1);
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
            self.owners.remove(&chunk.row);
            request.unfinished -= 1;
            if request.unfinished == 0 {
                // Counted before the channel closes: the client may read /metrics as soon as
                // its answer is complete.
                finish(metrics, Outcome::Completed);
                self.running.remove(&id);
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
