//! Half precision to float32 and back: the activations' arithmetic is float32 whatever the
//! model's dtype, and its results are rounded to that dtype as PyTorch's would be.

use rayon::prelude::*;

use crate::Float;
#[cfg(target_arch = "x86_64")]
use crate::arch::x86;
use crate::arch::{Level, level, portable};

/// Values per task: enough to amortise a task, few enough that a decode step's stay on one
/// thread.
const CHUNK: usize = 1 << 14;

/// `values` as float32, widened on every core.
pub fn widened<W: Float>(values: &[W]) -> Vec<f32> {
    let mut wide = vec![0.0; values.len()];
    wide.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(wide, values)| widen(wide, values));
    wide
}

/// `values` rounded to `W` (as [`Float::from_f32`] rounds: to nearest, ties to even) on every
/// core.
pub fn narrowed<W: Float>(values: &[f32]) -> Vec<W> {
    let mut narrow = vec![W::default(); values.len()];
    narrow
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(narrow, values)| self::narrow(narrow, values));
    narrow
}

/// `values` rounded to `W` and widened back, in place: what a sum sees of a product that a
/// half-precision model stores before adding it.
pub fn round_through<W: Float>(values: &mut [f32]) {
    const BLOCK: usize = 256;
    let mut narrow = [W::default(); BLOCK];
    for values in values.chunks_mut(BLOCK) {
        let narrow = &mut narrow[..values.len()];
        self::narrow(narrow, values);
        widen(values, narrow);
    }
}

/// `wide[i] = values[i]`, as float32, on the calling thread.
pub fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
    match level() {
        // SAFETY: AVX-512F was detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { x86::avx512::widen(wide, values) },
        // SAFETY: AVX2, FMA and F16C were detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => unsafe { x86::avx2::widen(wide, values) },
        Level::Baseline => portable::widen(wide, values),
    }
}

/// `narrow[i] = wide[i]`, rounded as [`Float::from_f32`] rounds, on the calling thread.
pub fn narrow<W: Float>(narrow: &mut [W], wide: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma_f16c() {
        // SAFETY: AVX2, FMA and F16C were detected on this CPU.
        return unsafe { x86::avx2::narrow(narrow, wide) };
    }
    portable::narrow(narrow, wide)
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    type Widen<W> = fn(&mut [f32], &[W]);

    /// The portable loop, the dispatched one, the pool's and AVX2's where the CPU has it.
    fn everyday_widenings<W: Float>() -> Vec<(&'static str, Widen<W>)> {
        #[allow(unused_mut)]
        let mut widenings: Vec<(&str, Widen<W>)> = vec![
            ("portable", portable::widen),
            ("dispatched", widen),
            ("every core", |w, v| w.copy_from_slice(&widened(v))),
            ("as_f32", |w, v| w.copy_from_slice(&W::as_f32(v))),
        ];
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2_fma_f16c() {
            // SAFETY: detected just above.
            widenings.push(("avx2", |w, v| unsafe { x86::avx2::widen(w, v) }));
        }
        widenings
    }

    /// Each widening `widenings` gives, for all 65536 bit patterns of f16 and bf16, bit for bit
    /// as `half` widens.
    fn check_widenings(
        f16s: fn() -> Vec<(&'static str, Widen<f16>)>,
        bf16s: fn() -> Vec<(&'static str, Widen<bf16>)>,
    ) {
        fn check<W: Float + std::fmt::Debug>(
            from_bits: fn(u16) -> W,
            to_f32: fn(W) -> f32,
            widenings: Vec<(&str, Widen<W>)>,
        ) {
            let values: Vec<W> = (0..=u16::MAX).map(from_bits).collect();
            for (name, widen) in widenings {
                // One value short of a whole number of registers: the tail too.
                let values = &values[1..];
                let mut wide = vec![0.0; values.len()];
                widen(&mut wide, values);
                for (value, wide) in values.iter().zip(&wide) {
                    let exact = to_f32(*value);
                    assert!(
                        wide.to_bits() == exact.to_bits() || (wide.is_nan() && exact.is_nan()),
                        "{name}, {value:?}: {wide} vs {exact}"
                    );
                }
            }
        }
        check::<f16>(f16::from_bits, f16::to_f32, f16s());
        check::<bf16>(bf16::from_bits, bf16::to_f32, bf16s());
    }

    #[test]
    fn every_level_widens_every_half_precision_value_exactly() {
        check_widenings(everyday_widenings, everyday_widenings);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU: cargo test -- --ignored avx512 (cargo xtask test runs it there)"]
    fn avx512_widens_every_half_precision_value_exactly() {
        fn avx512<W: Float>() -> Vec<(&'static str, Widen<W>)> {
            assert!(
                is_x86_feature_detected!("avx512f"),
                "this CPU has no AVX-512F"
            );
            // SAFETY: asserted just above.
            vec![("avx512", |w, v| unsafe { x86::avx512::widen(w, v) })]
        }
        check_widenings(avx512, avx512);
    }

    /// Rounding to half precision, on every path this CPU has, bit for bit as `half` rounds:
    /// every float32 whose low 16 bits are at or beside a rounding boundary of either type
    /// (halfway, just under, just over, exact) under each of the 65536 high halves (every
    /// sign, exponent, NaN and infinity), and a spread of the rest.
    #[test]
    fn narrowing_rounds_every_value_as_half_does() {
        fn check<W: Float + PartialEq + std::fmt::Debug>(
            to_bits: fn(W) -> u16,
            from_f32: fn(f32) -> W,
        ) {
            let lows = [
                0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x7fff, 0x8000, 0x8001,
            ];
            let lows = lows.into_iter().chain([0xe000, 0xefff, 0xf000, 0xffff]);
            let boundaries = (0..=u32::from(u16::MAX))
                .flat_map(|high| lows.clone().map(move |low| high << 16 | low));
            let spread = (0..1u32 << 22).map(|i| i.wrapping_mul(2_654_435_761));
            let wide: Vec<f32> = boundaries.chain(spread).map(f32::from_bits).collect();
            let mut portable = vec![W::default(); wide.len()];
            portable::narrow(&mut portable, &wide);
            let mut narrowings: Vec<(&str, Vec<W>)> =
                vec![("every core", narrowed(&wide)), ("portable", portable)];
            #[cfg(target_arch = "x86_64")]
            if x86::has_avx2_fma_f16c() {
                let mut ours = vec![W::default(); wide.len() - 1];
                // SAFETY: detected just above. One short of whole registers: the tail too.
                unsafe { x86::avx2::narrow(&mut ours, &wide[1..]) };
                ours.insert(0, W::from_f32(wide[0]));
                narrowings.push(("avx2", ours));
            }
            for (name, narrow) in narrowings {
                assert_eq!(narrow.len(), wide.len(), "{name}: every value, once");
                for (wide, ours) in wide.iter().zip(&narrow) {
                    assert_eq!(
                        to_bits(*ours),
                        to_bits(from_f32(*wide)),
                        "{name}: {wide:e} ({:#010x})",
                        wide.to_bits()
                    );
                }
            }
        }
        check::<f16>(f16::to_bits, f16::from_f32);
        check::<bf16>(bf16::to_bits, bf16::from_f32);
    }

    #[test]
    fn rounding_through_half_precision_keeps_what_it_holds_and_rounds_the_rest() {
        let mut values = vec![1.0, 1.0 + f32::EPSILON, 0.1, -3.5, 65520.0];
        round_through::<f16>(&mut values);
        let expected = [1.0, 1.0, f16::from_f32(0.1).to_f32(), -3.5, f32::INFINITY];
        assert_eq!(values, expected);
    }
}
