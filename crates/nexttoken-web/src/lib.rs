//! nexttoken in a web page: the model, tokenizer and generation crates compiled to WebAssembly,
//! running on burn's wgpu backend through the browser's WebGPU, or on burn-flex (with wasm
//! SIMD128) where there is none. `web/` holds the page that drives it.
//!
//! What the browser changes, and how it is met here:
//! - WebGPU hands results back only to the event loop, so nothing may block on them: the
//!   session is stepped with `TextSession::step_async`, and the page's `on_text` callback may
//!   return a promise that the next step waits for (the page uses it to repaint).
//! - There are no threads (rayon runs its work on the calling thread) and no
//!   `std::time::Instant` (the generation crate times itself with `web-time`).
//! - The checkpoint arrives as bytes (fetched or picked by the user), never as a file path.
//! - A WebGPU device has a largest buffer: a model whose largest tensor does not fit is refused
//!   with that figure before any weight is uploaded.
//!
//! On other targets only the pure parts are compiled, for their tests.

// Used by the page; elsewhere only by its tests.
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
mod fit;
#[cfg(target_family = "wasm")]
mod page;

#[cfg(target_family = "wasm")]
pub use page::{Generator, Options, Summary};
