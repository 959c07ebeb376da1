//! How the kernels share rayon's pool: a pass kept on its threads, work split evenly across
//! them, and outputs written by many tasks at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tasks per thread: enough for rayon to even out a thread that starts late, few enough that
/// each task's block of weight rows is one long stream and a prompt's `gemm` packs the
/// activations once per task (1 to 16 measured level within noise).
const TASKS_PER_THREAD: usize = 2;

/// Rows of a `rows`-row matrix per task, for an even split across the current pool.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD)
        .max(1)
}

/// Why [`set_threads`] could not size the pool.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("the thread count must be at least 1")]
    Zero,
    #[error("{0}; set the thread count before running anything")]
    AlreadyStarted(#[from] rayon::ThreadPoolBuildError),
}

/// Sizes rayon's global pool, where the kernels (and burn-flex's and ndarray's own loops) run
/// unless the caller installs a pool of its own, for the rest of the process.
///
/// # Errors
/// [`ThreadsError::Zero`] for 0; [`ThreadsError::AlreadyStarted`] once the global pool has
/// started (it can be sized only once, before its first use).
pub fn set_threads(threads: usize) -> Result<(), ThreadsError> {
    if threads == 0 {
        return Err(ThreadsError::Zero);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    Ok(())
}

/// Runs `pass` on a thread of the current pool, with the pool's other threads kept taking its
/// tasks ([`keep_stealing`]) until it ends, so that the parallel loops of a forward pass (these
/// kernels' and burn-flex's) start from inside the pool. Started from outside, each of a decode
/// step's ~60 products handed its work to the pool and put the caller to sleep until it was
/// done, and between two products an idle worker went to sleep, to be woken for the next: ~50
/// sleeps and wake-ups a token, each through the hypervisor on a VM.
///
/// A panic in `pass` comes back to the caller once the keepers give up ([`MAX_KEEP_IDLE`]).
pub fn in_pool<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| keep_stealing(&done));
        }
        let result = pass();
        done.store(true, Ordering::Release);
        result
    })
}

/// Longest a [`keep_stealing`] worker spins without finding a task: far longer than the gaps
/// between a pass's parallel loops (microseconds), and the bound on how long a keeper holds up
/// whatever waits beneath it on its thread's stack (a worker may take a keeper while it waits
/// for a task of its own to be finished elsewhere), or a pass that panicked before `done`.
const MAX_KEEP_IDLE: Duration = Duration::from_millis(1);

/// Takes the pool's queued tasks, spinning between them, until `done` or [`MAX_KEEP_IDLE`]
/// without one; rayon's own idle loop sleeps after a few dozen yields.
fn keep_stealing(done: &AtomicBool) {
    let mut idle_since = None;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            Some(rayon::Yield::Idle) => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() > MAX_KEEP_IDLE {
                    return;
                }
                std::hint::spin_loop();
            }
            None => return,
        }
    }
}

/// An output's pointer, shared by tasks that each write their own part of it.
pub(crate) struct SharedOut<T = f32>(*mut T);

impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedOut<T> {}

// SAFETY: the tasks that share it write disjoint values and nothing reads them until all are
// done (rayon's `for_each` returns after every task), or reads only values no task writes.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as for `Send`: no task reads what another writes.
unsafe impl<T: Sync> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// For a vector the tasks fill up to its capacity.
    pub(crate) fn new(out: &mut Vec<T>) -> Self {
        Self(out.as_mut_ptr())
    }

    /// For values the tasks write in place.
    pub(crate) fn of_slice(out: &mut [T]) -> Self {
        Self(out.as_mut_ptr())
    }

    /// The output's value at `index` (a method: a closure calling it captures the whole `Sync`
    /// wrapper, not its raw pointer field).
    pub(crate) fn at(self, index: usize) -> *mut T {
        self.0.wrapping_add(index)
    }
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    #[test]
    fn a_pass_in_the_pool_finishes_nested_parallel_work_and_returns_its_panics() {
        // Four threads: keepers can be taken by workers waiting on their own tasks.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let total = pool.install(|| {
            in_pool(|| {
                (0..200u64)
                    .into_par_iter()
                    .map(|i| (0..1000u64).into_par_iter().map(|j| i * j).sum::<u64>())
                    .sum::<u64>()
            })
        });
        assert_eq!(total, (0..200u64).sum::<u64>() * (0..1000u64).sum::<u64>());
        // The keepers never see `done`: they must give up for the panic to come back.
        let panicked =
            pool.install(|| std::panic::catch_unwind(|| in_pool(|| panic!("a bad pass"))));
        assert!(panicked.is_err());
    }

    #[test]
    fn work_is_split_across_the_callers_pool() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (threads, per_task) =
            pool.install(|| in_pool(|| (rayon::current_num_threads(), rows_per_task(61))));
        assert_eq!(
            (threads, per_task),
            (3, 11),
            "61 rows over 3 threads × 2 tasks"
        );
        assert_eq!(rows_per_task(0), 1, "an empty matrix still makes one task");
    }

    #[test]
    fn a_pool_of_no_threads_is_refused() {
        assert!(matches!(set_threads(0), Err(ThreadsError::Zero)));
    }
}
