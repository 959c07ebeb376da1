//! The instruction sets the kernels are written for, and which one this CPU runs: detected
//! once, at the first kernel call.

pub(crate) mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub use x86::Load;

/// What an ISA module needs of a [`Float`](crate::Float) type (x86: loads that widen a
/// register's worth); nothing where there is no such module.
#[cfg(not(target_arch = "x86_64"))]
pub trait Load {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Load for T {}

/// The widest kernels this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// AVX-512F and FMA: 16 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2, FMA and F16C: 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// The portable loops, as the build's target compiles them.
    Baseline,
}

pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Level::Avx512;
            }
            if x86::has_avx2_fma_f16c() {
                return Level::Avx2Fma;
            }
        }
        Level::Baseline
    })
}

/// Calls the portable `$kernel::<FUSED, $W, ...>` (or `$kernel::<FUSED>`) inlined into a
/// function compiled for the detected level, where LLVM vectorizes it for that level's
/// registers: the kernels whose plain loops vectorize well need no hand-written version.
macro_rules! dispatch {
    ($kernel:ident[$($w:ty),*]($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,fma")]
            fn avx512<R>(f: impl FnOnce() -> R) -> R { f() }
            #[target_feature(enable = "avx2,fma")]
            fn avx2<R>(f: impl FnOnce() -> R) -> R { f() }
            match $crate::arch::level() {
                // SAFETY: AVX-512F and FMA were detected on this CPU.
                $crate::arch::Level::Avx512 => unsafe { avx512(|| $kernel::<true $(, $w)*>($($arg),*)) },
                // SAFETY: AVX2 and FMA were detected on this CPU.
                $crate::arch::Level::Avx2Fma => unsafe { avx2(|| $kernel::<true $(, $w)*>($($arg),*)) },
                $crate::arch::Level::Baseline => $kernel::<false $(, $w)*>($($arg),*),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $kernel::<false $(, $w)*>($($arg),*)
        }
    }};
}
pub(crate) use dispatch;
