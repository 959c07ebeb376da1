//! Who runs and who waits. A request's rows either fit in the batch now (`--max-batch` rows
//! generating at once) or the request waits in the queue (`--max-queue` requests), or it is
//! refused with 429. The handlers take a place here before handing a request to the engine, and
//! the engine gives places back, so the counts say what they mean at every moment: a request
//! that fits is counted as running from the moment it is accepted, never as waiting.

use std::sync::{Mutex, MutexGuard};

use crate::error::ApiError;

#[derive(Debug)]
pub struct Admission {
    counts: Mutex<Counts>,
    max_batch: usize,
    max_queue: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Rows generating, or accepted to generate at the engine's next step.
    pub rows: usize,
    /// Requests waiting for room in the batch.
    pub waiting: usize,
}

/// Where an accepted request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Its rows are counted in the batch: it joins at the next step.
    Batch,
    /// It waits in the queue, in order, until [`Admission::promote`] finds room.
    Queue,
}

impl Admission {
    pub fn new(max_batch: usize, max_queue: usize) -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            max_batch,
            max_queue,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts are two integers updated in one statement each: never half-written.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counts(&self) -> Counts {
        *self.lock()
    }

    /// Takes a place for a request of `rows` rows: in the batch if it fits and nobody waits
    /// before it, else in the queue, else a 429 saying why.
    pub fn enter(&self, rows: usize) -> Result<Place, ApiError> {
        let mut counts = self.lock();
        if counts.waiting == 0 && counts.rows + rows <= self.max_batch {
            counts.rows += rows;
            return Ok(Place::Batch);
        }
        if counts.waiting < self.max_queue {
            counts.waiting += 1;
            return Ok(Place::Queue);
        }
        Err(ApiError::busy(format!(
            "the server is at capacity: {} of {} rows generating (--max-batch) and {} of {} \
             requests waiting (--max-queue); retry later",
            counts.rows, self.max_batch, counts.waiting, self.max_queue
        )))
    }

    /// Moves the request at the head of the queue into the batch if its `rows` fit; whether
    /// they did.
    pub fn promote(&self, rows: usize) -> bool {
        let mut counts = self.lock();
        // A request alone in the batch always fits (the handlers refuse larger ones).
        if counts.rows > 0 && counts.rows + rows > self.max_batch {
            return false;
        }
        counts.waiting -= 1;
        counts.rows += rows;
        true
    }

    /// A queued request left before it ran (its client went away, or the server stops).
    pub fn leave_queue(&self) {
        let mut counts = self.lock();
        counts.waiting = counts.waiting.saturating_sub(1);
    }

    /// `rows` of the batch finished or were cancelled.
    pub fn release(&self, rows: usize) {
        let mut counts = self.lock();
        counts.rows = counts.rows.saturating_sub(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_fit_run_and_the_rest_wait_in_order() {
        let admission = Admission::new(4, 2);
        assert_eq!(admission.enter(3), Ok(Place::Batch));
        assert_eq!(admission.enter(1), Ok(Place::Batch));
        assert_eq!(admission.enter(1), Ok(Place::Queue));
        // Room for one row, but someone waits first: no overtaking.
        admission.release(1);
        assert_eq!(admission.enter(1), Ok(Place::Queue));
        let busy = admission.enter(1).unwrap_err();
        assert_eq!(busy.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(
            busy.message.contains("3 of 4 rows") && busy.message.contains("2 of 2 requests"),
            "{}",
            busy.message
        );
        assert!(admission.promote(1));
        assert!(!admission.promote(1));
        admission.leave_queue();
        assert_eq!(
            admission.counts(),
            Counts {
                rows: 4,
                waiting: 0
            }
        );
        admission.release(4);
        assert_eq!(
            admission.counts(),
            Counts {
                rows: 0,
                waiting: 0
            }
        );
    }

    /// `--max-queue 0` means no waiting, not no serving.
    #[test]
    fn without_a_queue_requests_that_fit_still_run() {
        let admission = Admission::new(2, 0);
        assert_eq!(admission.enter(2), Ok(Place::Batch));
        assert!(admission.enter(1).is_err());
        admission.release(2);
        assert_eq!(admission.enter(1), Ok(Place::Batch));
    }
}
