//! The `nexttoken` Python package's native module: the command line's generator and scorer
//! (`nexttoken-load`, `nexttoken-generate`) behind a Python API.
//!
//! Every call that runs the model releases the GIL and checks for Ctrl-C between steps; errors
//! become Python exceptions carrying the message the command line prints.

/// The command line's allocator, for the same reason (crates/nexttoken-cli/src/main.rs): each
/// step allocates and frees tensors of a few MB, which glibc's malloc returns to the kernel.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod errors;
mod model;
mod results;
mod settings;
mod signals;
mod stream;
mod tokenizer;

use pyo3::prelude::*;

#[pymodule]
fn _nexttoken(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<model::Model>()?;
    module.add_class::<tokenizer::Tokenizer>()?;
    module.add_class::<results::Completion>()?;
    module.add_class::<results::TokenLogprob>()?;
    module.add_class::<results::Score>()?;
    module.add_class::<stream::Stream>()?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add("BUILT_IN_MODEL", nexttoken_load::BUILT_IN_NAME)?;
    Ok(())
}
