//! The CPU kernels of nexttoken's GPT-2 forward pass, on plain slices: a decode step's few-row
//! products, a prompt's products, attention over a key/value cache, layer norm, GPT-2's GELU and
//! softmax. Weights and activations may be stored as float32, f16 or bf16 ([`Float`]); the
//! arithmetic is float32.
//!
//! `nexttoken-model` calls these on burn-flex's tensors (its `flex.rs` is the only glue); they
//! know nothing of burn, so each can be tested, measured or replaced here alone.
//!
//! ```
//! use nexttoken_cpu::{softmax_in_place, times_transposed};
//!
//! // Two rows of inputs times a [3, 4] weight stored by output (each output's weights together).
//! let x = [1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
//! let w = [1.0f32, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0, 0.0, 0.0];
//! let mut y = times_transposed(&x, &w, [2, 4, 3]);
//! assert_eq!(y, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
//! y.chunks_exact_mut(3).for_each(softmax_in_place);
//! assert!((y[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```
//!
//! # Layout
//! One file per operation: [`product`] (a few rows times a weight, in dot products; more rows
//! in blocks of weight rows), [`matmul`] (`gemm` in float32, bf16 pairs where the CPU multiplies
//! them), [`attention`], [`softmax`], [`norm`], [`gelu`], [`widen`] (half precision to float32
//! and back). Each dispatches at run time to the widest instruction set the CPU has (the build
//! targets baseline x86-64): `arch/x86/{avx512, avx2, avx512_bf16}`, or the portable loops of
//! `arch/portable.rs`, which are also what each vector kernel is tested against. An ARM NEON
//! module would sit beside `x86/`.
//!
//! # Threads
//! Every kernel runs on rayon's *current* pool: the global one (every logical CPU unless
//! [`set_threads`] sized it), or one the caller installs, which then carries the kernels and
//! burn-flex's own parallel loops alike:
//!
//! ```
//! let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
//! let logits = pool.install(|| nexttoken_cpu::in_pool(|| {
//!     nexttoken_cpu::times_transposed(&[1.0f32; 64], &[0.5f32; 64 * 8], [1, 64, 8])
//! }));
//! assert_eq!(logits, [32.0; 8]);
//! # Ok::<(), rayon::ThreadPoolBuildError>(())
//! ```
//!
//! A forward pass is a few dozen parallel loops microseconds apart; [`in_pool`] runs one with
//! the pool's threads kept awake between them (see there for why).

mod arch;
pub mod attention;
mod float;
pub mod gelu;
pub mod matmul;
pub mod norm;
mod pool;
pub mod product;
pub mod quant;
pub mod softmax;
pub mod widen;

pub use attention::{Attention, AttentionRow};
pub use float::Float;
pub use gelu::gelu_new;
pub use half::{bf16, f16};
pub use norm::layer_norm;
pub use pool::{ThreadsError, in_pool, set_threads};
pub use product::{MAX_DOT_ROWS, times_transposed};
pub use softmax::softmax_in_place;
pub use widen::{narrowed, round_through, widened};
