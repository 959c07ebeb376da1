//! Which burn backends this build of nexttoken has, and a [`Device`] for each.
//!
//! burn 0.22 picks the backend from the device a tensor lives on; cargo features decide which
//! backends exist in a build. This crate maps the names users type (`--backend wgpu`) to
//! devices, and turns the ways a backend can fail to start (not compiled in, no Vulkan driver,
//! libtorch missing) into errors that say what to install or which feature to add.
//!
//! ```
//! use nexttoken_backend::Backend;
//!
//! let backend: Backend = "flex".parse()?;
//! assert!(Backend::compiled().contains(&backend));
//! let device = backend.device()?;
//! # Ok::<(), nexttoken_backend::BackendError>(())
//! ```

mod backend;
mod error;
mod threads;
#[cfg(feature = "wgpu")]
mod vulkan;

pub use backend::{Backend, dtype_name};
pub use error::BackendError;
pub use threads::set_cpu_threads;
