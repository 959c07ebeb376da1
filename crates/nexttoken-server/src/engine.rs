//! The generation thread: one [`TextSession`] that every request's rows join and leave
//! (continuous batching). Requests come in over a channel; each row's tokens go back over its
//! request's own channel, and a request whose channel is closed (the client went away) is
//! cancelled before the next step.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nexttoken_generate::{FinishReason, Logprobs, RowId, TextGenerator, TextSession};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::Job;
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

/// What a request hears from the engine.
#[derive(Debug)]
pub enum Event {
    /// Choice `choice` got a token and the text it completed (possibly empty).
    Token {
        choice: usize,
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
        finish: Option<FinishReason>,
    },
    /// The request could not run; nothing more follows.
    Failed(ApiError),
}

pub struct Submission {
    pub job: Job,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// The handle requests are submitted through; dropping every clone stops the thread once its
/// running requests have finished.
#[derive(Clone)]
pub struct Engine {
    submissions: Sender<Submission>,
}

impl Engine {
    /// Starts the generation thread on `generator`, running at most `max_batch` rows at once.
    pub fn start(
        generator: TextGenerator,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (submissions, incoming) = channel();
        let thread = std::thread::Builder::new()
            .name("nexttoken-engine".into())
            .spawn(move || run(&generator, &incoming, max_batch, &metrics))?;
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
    answered: bool,
}

fn run(
    generator: &TextGenerator,
    incoming: &Receiver<Submission>,
    max_batch: usize,
    metrics: &Metrics,
) {
    let mut session = generator.session(true);
    let mut waiting: VecDeque<Submission> = VecDeque::new();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut owners: HashMap<RowId, (u64, usize)> = HashMap::new();
    let mut next_request = 0u64;
    loop {
        // Idle: wait for work (waking now and then, so a closed channel is noticed).
        if running.is_empty() && waiting.is_empty() {
            match incoming.recv_timeout(Duration::from_millis(200)) {
                Ok(submission) => waiting.push_back(submission),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        waiting.extend(incoming.try_iter());

        // Admit waiting requests while their rows fit (a request larger than the batch runs
        // alone rather than never).
        while let Some(next) = waiting.front() {
            let live = session.live_rows();
            if live > 0 && live + next.job.choices.len() > max_batch {
                break;
            }
            let Some(submission) = waiting.pop_front() else {
                break;
            };
            metrics.queued.fetch_sub(1, Ordering::Relaxed);
            if submission.events.is_closed() {
                finish(metrics, Outcome::Cancelled);
                continue;
            }
            let id = next_request;
            next_request += 1;
            match admit(&mut session, &submission.job) {
                Ok(rows) => {
                    for (choice, row) in rows.iter().enumerate() {
                        owners.insert(*row, (id, choice));
                    }
                    let prompt_tokens: usize = submission
                        .job
                        .choices
                        .iter()
                        .map(|c| c.prompt_ids.len())
                        .sum();
                    metrics
                        .prompt_tokens
                        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                    running.insert(
                        id,
                        Running {
                            events: submission.events,
                            unfinished: rows.len(),
                            rows,
                            arrived: submission.arrived,
                            answered: false,
                        },
                    );
                }
                Err(error) => {
                    let _ = submission.events.send(Event::Failed(error));
                    finish(metrics, Outcome::Invalid);
                }
            }
        }

        // A request whose client went away leaves before the next step.
        let gone: Vec<u64> = running
            .iter()
            .filter(|(_, request)| request.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(request) = running.remove(&id) {
                for row in &request.rows {
                    session.cancel(*row);
                    owners.remove(row);
                }
                finish(metrics, Outcome::Cancelled);
            }
        }
        metrics
            .batch_rows
            .store(session.live_rows() as u64, Ordering::Relaxed);
        if running.is_empty() {
            continue;
        }

        let start = Instant::now();
        let step = match catch_unwind(AssertUnwindSafe(|| session.step())) {
            Ok(Ok(step)) => step,
            failure => {
                let message = match failure {
                    Ok(Err(e)) => format!("the generation failed: {e}"),
                    _ => {
                        "the generation failed (a panic in the engine; see the server's log)".into()
                    }
                };
                tracing::error!("{message}");
                // The session may be inconsistent: fail what runs and start a fresh one.
                for (_, request) in running.drain() {
                    let _ = request
                        .events
                        .send(Event::Failed(ApiError::internal(message.clone())));
                    finish(metrics, Outcome::Failed);
                }
                owners.clear();
                session = generator.session(true);
                continue;
            }
        };
        metrics.token_latency.observe(start.elapsed());
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

/// Adds every choice of `job` to the session; on an error, takes back what was added.
fn admit(session: &mut TextSession, job: &Job) -> Result<Vec<RowId>, ApiError> {
    let mut rows = Vec::with_capacity(job.choices.len());
    for choice in &job.choices {
        match session.add_ids(choice.prompt_ids.clone(), &choice.config, &job.stop) {
            Ok(row) => rows.push(row),
            Err(e) => {
                for row in rows {
                    session.cancel(row);
                }
                return Err(ApiError::invalid(None, e.to_string()));
            }
        }
    }
    Ok(rows)
}

fn finish(metrics: &Metrics, outcome: Outcome) {
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics.finished(outcome);
}
