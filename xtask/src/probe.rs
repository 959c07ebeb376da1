//! What the machine itself can do, for `cargo xtask speed`'s bounds: the memory's read
//! bandwidth (a batch-1 decode step reads every weight once) and the cores' float32
//! multiply-add rate (a prefill does two flops a weight per prompt token, in blocks that stay
//! in cache). Each is the best of 5 runs on `threads` threads at once; the bandwidth is also
//! read as sustained over seconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// What [`read_bandwidth`] measured, in GB/s.
pub struct Bandwidth {
    /// The best of 5 passes (STREAM's own figure).
    pub best: f64,
    /// Over [`SUSTAINED`] of passes: all the bytes read over all the time. On this project's
    /// VM the memory's speed moves between 32 and 55 GB/s (two threads) from one second to the
    /// next, where the best pass of a probe lasting a tenth of a second sees one moment, and a
    /// decode measured over seconds sees them all.
    pub sustained: f64,
}

/// How long [`Bandwidth::sustained`] reads.
const SUSTAINED: Duration = Duration::from_secs(3);

/// The memory's read bandwidth with `threads` threads, STREAM-style: passes summing a 1 GiB
/// buffer (far past any cache), each thread its own contiguous part, with the widest vector
/// loads the CPU has (a baseline SSE2 loop read less than llama.cpp's decode moved on one core),
/// the better of reading each part as one stream or two side by side (one stream a thread read
/// 17.6 GB/s on a core of the AVX2 EPYC whose decode, reading two, moved 20.3; two read
/// 19.8-22.7 there), the better then read for [`SUSTAINED`].
pub fn read_bandwidth(threads: usize) -> Bandwidth {
    read_bandwidth_over(threads, SUSTAINED)
}

/// [`read_bandwidth`], its sustained figure read over `over`.
pub fn read_bandwidth_over(threads: usize, over: Duration) -> Bandwidth {
    let values = vec![1.0f32; 1 << 28];
    let part = values.len().div_ceil(threads.max(1));
    let gb = size_of_val(values.as_slice()) as f64 / 1e9;
    let passes = |sum: fn(&[f32]) -> f32, at_least: Duration| {
        run_times(threads, at_least, |thread| {
            values.chunks(part).nth(thread).map_or(0.0, sum)
        })
    };
    let (one, two) = (
        passes(sum_widest::<1>, Duration::ZERO),
        passes(sum_widest::<2>, Duration::ZERO),
    );
    let better: fn(&[f32]) -> f32 = if shortest(&one) <= shortest(&two) {
        sum_widest::<1>
    } else {
        sum_widest::<2>
    };
    let sustained = passes(better, over);
    Bandwidth {
        best: gb / shortest(&one).min(shortest(&two)),
        sustained: gb * sustained.len() as f64 / sustained.iter().sum::<f64>(),
    }
}

/// The shortest of 5 runs, in seconds, of `work(thread)` on each of `threads` threads at once.
fn fastest_run(threads: usize, work: impl Fn(usize) -> f32 + Sync) -> f64 {
    shortest(&run_times(threads, Duration::ZERO, work))
}

fn shortest(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The seconds each run took of `work(thread)` on each of `threads` threads at once: 5 runs, or
/// as many more as `at_least` takes.
fn run_times(threads: usize, at_least: Duration, work: impl Fn(usize) -> f32 + Sync) -> Vec<f64> {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 5 || started.elapsed() < at_least {
        let start = Instant::now();
        let total: f32 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|thread| {
                    let work = &work;
                    scope.spawn(move || work(thread))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        times.push(start.elapsed().as_secs_f64());
        black_box(total);
    }
    times
}

fn sum_widest<const STREAMS: usize>(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<const STREAMS: usize>(values: &[f32]) -> f32 {
            sum::<STREAMS>(values)
        }
        #[target_feature(enable = "avx2")]
        fn avx2<const STREAMS: usize>(values: &[f32]) -> f32 {
            sum::<STREAMS>(values)
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { avx512::<STREAMS>(values) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2::<STREAMS>(values) };
        }
    }
    sum::<STREAMS>(values)
}

/// A sum of `values` read as `STREAMS` equal parts side by side, in 64 independent lanes in all:
/// one running sum would be bound by the add's latency, not by the memory. The last few values
/// (under 64) are left out.
#[inline(always)]
fn sum<const STREAMS: usize>(values: &[f32]) -> f32 {
    let lanes = 64 / STREAMS;
    let part = values.len() / STREAMS / lanes * lanes;
    let streams: [&[f32]; STREAMS] = std::array::from_fn(|s| &values[s * part..][..part]);
    let mut sums = [0.0f32; 64];
    for start in (0..part).step_by(lanes) {
        for (sums, stream) in sums.chunks_exact_mut(lanes).zip(streams) {
            let block = &stream[start..start + lanes];
            for (sum, value) in sums.iter_mut().zip(block) {
                *sum += value;
            }
        }
    }
    sums.iter().sum()
}

/// Independent running sums a thread keeps: more than a multiply-add's latency times the
/// multiply-adds a core starts per cycle (4 x 2 on current x86 cores), so that none waits.
const ACCUMULATORS: usize = 12;

/// Rounds of multiply-adds per accumulator in one run: ~0.1 s on a current core.
const ROUNDS: usize = 1 << 23;

/// The cores' float32 multiply-add rate in GFLOP/s (a multiply-add is two) with `threads`
/// threads: the best of 5 runs of independent multiply-adds held in registers, in the widest
/// vectors the CPU has. A matrix kernel's inner loop does the same with loads beside it, so
/// this is what a prefill's products can reach at most.
pub fn multiply_add_rate(threads: usize) -> f64 {
    let lanes = multiply_adds(0).0;
    let seconds = fastest_run(threads, |_| multiply_adds(ROUNDS).1);
    let flops = 2 * lanes * ACCUMULATORS * ROUNDS * threads.max(1);
    flops as f64 / seconds / 1e9
}

/// `rounds` rounds of `sum = sum * 0.5 + 1` on each lane of [`ACCUMULATORS`] vectors: the
/// lanes per vector and the sum of every lane (each lane holds 2 - 2^(1 - rounds), exact).
///
/// Written out in each width's intrinsics: the same loop over `[f32; LANES]` arrays with
/// `f32::mul_add`, inlined into functions with these target features (as [`sum`] is), ran at
/// 3.9 GFLOP/s on a core of the AVX2 EPYC where these run at 98.
fn multiply_adds(rounds: usize) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx512f")]
        fn avx512(rounds: usize) -> f32 {
            let (half, one) = (
                _mm512_set1_ps(black_box(0.5)),
                _mm512_set1_ps(black_box(1.0)),
            );
            let mut sums = [_mm512_setzero_ps(); ACCUMULATORS];
            for _ in 0..rounds {
                for sum in &mut sums {
                    *sum = _mm512_fmadd_ps(*sum, half, one);
                }
            }
            sums.iter().map(|&sum| _mm512_reduce_add_ps(sum)).sum()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(rounds: usize) -> f32 {
            let (half, one) = (
                _mm256_set1_ps(black_box(0.5)),
                _mm256_set1_ps(black_box(1.0)),
            );
            let mut sums = [_mm256_setzero_ps(); ACCUMULATORS];
            for _ in 0..rounds {
                for sum in &mut sums {
                    *sum = _mm256_fmadd_ps(*sum, half, one);
                }
            }
            let mut lanes = [0.0f32; 8];
            let mut total = 0.0;
            for sum in sums {
                // SAFETY: `lanes` holds the 8 values stored.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
                total += lanes.iter().sum::<f32>();
            }
            total
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU.
            return (16, unsafe { avx512(rounds) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return (8, unsafe { avx2(rounds) });
        }
    }
    let (half, one) = (black_box(0.5f32), black_box(1.0f32));
    let mut sums = [0.0f32; ACCUMULATORS];
    for _ in 0..rounds {
        for sum in &mut sums {
            *sum = sum.mul_add(half, one);
        }
    }
    (1, sums.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bandwidth_probe_reads_every_value_in_every_stream_count() {
        // Small integers: their float32 sums are exact in any order.
        let values: Vec<f32> = (0..64 * 10).map(|v| (v % 7) as f32).collect();
        let expected: f32 = values.iter().sum();
        assert_eq!(sum_widest::<1>(&values), expected);
        assert_eq!(sum_widest::<2>(&values), expected);
    }

    #[test]
    fn the_multiply_add_probe_does_every_round_on_every_lane() {
        for rounds in [0, 1, 3, 10] {
            let (lanes, total) = multiply_adds(rounds);
            // 1, 1.5, 1.75, ...: 2 - 2^(1 - rounds) after `rounds` rounds, exact in float32.
            let each = if rounds == 0 {
                0.0
            } else {
                2.0 - 2f32.powi(1 - rounds as i32)
            };
            assert_eq!(
                total,
                (lanes * ACCUMULATORS) as f32 * each,
                "{rounds} rounds"
            );
        }
    }
}
