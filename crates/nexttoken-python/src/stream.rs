//! `Model.stream`: the generation runs on a thread of its own and hands its text over a
//! channel, so that Python code between two chunks (printing, sending) overlaps the next steps.
//! The channel holds a few chunks: a consumer that stops reading pauses the generation there,
//! and `close()`, the end of a `with` block or the stream's collection ends it.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use nexttoken_generate::{GenerateError, TextGenerator};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::errors::generate_error;
use crate::results::Completion;
use crate::settings::Settings;
use crate::signals::SIGNAL_CHECK;

/// Chunks the generation may run ahead of its reader.
const AHEAD: usize = 4;

enum Event {
    Text(String),
    Done(Result<nexttoken_generate::Completion, GenerateError>),
}

/// The text of one prompt's continuation as it is generated; `completion` holds the whole
/// result (ids, finish reason) once the iterator is exhausted.
#[pyclass(module = "nexttoken")]
pub struct Stream {
    /// Only `__next__` reads it, through `&mut self`; the mutex makes the class `Sync`, as
    /// PyO3 requires.
    events: Mutex<Receiver<Event>>,
    stop: Arc<AtomicBool>,
    #[pyo3(get)]
    completion: Option<Py<Completion>>,
    finished: bool,
}

impl Stream {
    pub fn start(generator: Arc<TextGenerator>, prompt: String, settings: Settings) -> Self {
        let (sender, events) = sync_channel(AHEAD);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || generate(&generator, &prompt, &settings, &sender, &stopped));
        Self {
            events: Mutex::new(events),
            stop,
            completion: None,
            finished: false,
        }
    }
}

fn generate(
    generator: &TextGenerator,
    prompt: &str,
    settings: &Settings,
    events: &SyncSender<Event>,
    stop: &AtomicBool,
) {
    let result = generator.session().generate(
        &[prompt],
        &settings.config,
        &settings.stop,
        |_, text| match events.send(Event::Text(text.to_string())) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        },
        |_| {
            if stop.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    );
    let completion = result.map(|(completions, _)| completions.into_iter().next());
    let done = match completion {
        Ok(Some(completion)) => Ok(completion),
        Ok(None) => Err(GenerateError::NoPrompts),
        Err(error) => Err(error),
    };
    // A consumer that has gone needs no result.
    let _ = events.send(Event::Done(done));
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let events = self
                .events
                .get_mut()
                .map_err(|_| PyRuntimeError::new_err("the stream's channel is poisoned"))?;
            let event = py.detach(move || events.recv_timeout(SIGNAL_CHECK));
            match event {
                Ok(Event::Text(text)) => return Ok(Some(text)),
                Ok(Event::Done(result)) => {
                    self.finished = true;
                    let completion = result.map_err(|e| generate_error(&e))?;
                    self.completion = Some(Py::new(py, Completion::new(py, completion)?)?);
                    return Ok(None);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(interrupt) = py.check_signals() {
                        self.close();
                        return Err(interrupt);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finished = true;
                    return Err(PyRuntimeError::new_err(
                        "the generation thread ended without a result (this is a bug: please \
                         report it)",
                    ));
                }
            }
        }
    }

    /// Stops the generation at its next step; the iterator then ends.
    fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.finished = true;
        // A generation waiting for room in the channel sees the stop once it has some.
        if let Ok(events) = self.events.get_mut() {
            while events.try_recv().is_ok() {}
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exception))]
    fn __exit__(&mut self, _exception: &Bound<'_, pyo3::types::PyTuple>) {
        self.close();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
