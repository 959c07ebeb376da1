//! Ctrl-C during a call that runs with the GIL released. Python runs its signal handlers on
//! the main thread only, and only when asked: a model's loop asks every [`SIGNAL_CHECK`], and
//! only on the main thread (elsewhere there is nothing to run, and taking the GIL at every step
//! would slow the process's other Python threads).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How often a running call lets Python see Ctrl-C.
pub const SIGNAL_CHECK: Duration = Duration::from_millis(50);

pub struct Signals {
    on_main_thread: bool,
    last_check: Instant,
    raised: Option<PyErr>,
}

impl Signals {
    pub fn new(py: Python<'_>) -> PyResult<Self> {
        let threading = py.import("threading")?;
        let main = threading.call_method0("main_thread")?;
        let current = threading.call_method0("current_thread")?;
        Ok(Self {
            on_main_thread: current.is(&main),
            last_check: Instant::now(),
            raised: None,
        })
    }

    /// A step callback's answer: break once a signal handler has raised (KeyboardInterrupt).
    pub fn check(&mut self) -> ControlFlow<()> {
        if !self.on_main_thread || self.last_check.elapsed() < SIGNAL_CHECK {
            return ControlFlow::Continue(());
        }
        self.last_check = Instant::now();
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                self.raised = Some(error);
                ControlFlow::Break(())
            }
        }
    }

    /// What a signal handler raised during the call, if anything.
    pub fn raised(self) -> PyResult<()> {
        self.raised.map_or(Ok(()), Err)
    }
}
