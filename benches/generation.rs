//! Criterion benchmarks on GPT-2-124M-shaped random weights (speed does not depend on the
//! values), for every backend compiled into the build that can hold the model:
//!
//! - `prefill/<backend>/<t>`: a `t`-token prompt into an empty KV cache, last logits read back;
//! - `decode_step/<backend>/<p>`: one new token after `p` cached positions (short and long);
//! - `generate/<backend>/prompt4_new32`: a whole greedy generation, cache on.
//!
//! `cargo xtask bench --measure` measures; `cargo xtask bench` runs each once, as CI does.

use std::hint::black_box;
use std::ops::ControlFlow;

/// The allocator the `nexttoken` binary uses (see its main.rs), so the figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nexttoken::backend::Backend;
use nexttoken::generate::{GenerationConfig, generate};
use nexttoken::model::{Gpt2, Gpt2Config, KvCache};

/// Fresh ids for every call: some backends reuse results for identical inputs.
fn ids(seed: u32, t: usize) -> Vec<u32> {
    (0..t as u32)
        .map(|i| (seed.wrapping_mul(7919) + i * 104_729) % 50257)
        .collect()
}

/// The compiled backends that start here and can hold GPT-2 124M; the others say why not.
fn backends(config: &Gpt2Config) -> Vec<(Backend, Device)> {
    let (tensor, bytes) = config.largest_tensor();
    Backend::compiled()
        .into_iter()
        .filter_map(|backend| {
            match backend
                .probe()
                .and_then(|device| backend.check_fits(tensor, bytes).map(|()| device))
            {
                Ok(device) => Some((backend, device)),
                Err(e) => {
                    eprintln!("skipping {backend}: {e}");
                    None
                }
            }
        })
        .collect()
}

fn prefill(c: &mut Criterion, backend: Backend, model: &Gpt2) {
    let mut group = c.benchmark_group(format!("prefill/{backend}"));
    group.sample_size(10);
    for t in [128, 512] {
        group.throughput(Throughput::Elements(t as u64));
        let mut seed = 0;
        group.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, &t| {
            b.iter(|| {
                seed += 1;
                black_box(
                    model
                        .prefill(&[&ids(seed, t)], &mut KvCache::new())
                        .into_data(),
                )
            })
        });
    }
    group.finish();
}

fn decode_step(c: &mut Criterion, backend: Backend, model: &Gpt2) {
    let mut group = c.benchmark_group(format!("decode_step/{backend}"));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for position in [16, 1000] {
        let mut cache = KvCache::new();
        model.prefill(&[&ids(0, position)], &mut cache);
        let row = cache.rows().next().expect("one row");
        let mut seed = 0;
        group.bench_with_input(BenchmarkId::from_parameter(position), &position, |b, _| {
            b.iter(|| {
                seed += 1;
                // Every step writes the same position: the cache is written in place.
                cache.truncate_row(row, position);
                black_box(
                    model
                        .forward_cached(&[&ids(seed, 1)], &mut cache)
                        .into_data(),
                )
            })
        });
    }
    group.finish();
}

fn whole_generation(c: &mut Criterion, backend: Backend, model: &Gpt2) {
    let mut group = c.benchmark_group(format!("generate/{backend}"));
    group.sample_size(10);
    let new_tokens = 32;
    group.throughput(Throughput::Elements(new_tokens as u64));
    let config = GenerationConfig::new(new_tokens).without_eos();
    let mut seed = 0;
    group.bench_function("prompt4_new32", |b| {
        b.iter(|| {
            seed += 1;
            black_box(
                generate(model, &[ids(seed, 4)], &config, |_| {
                    ControlFlow::Continue(())
                })
                .map(|out| out.tokens),
            )
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let config = Gpt2Config::gpt2();
    for (backend, device) in backends(&config) {
        let model = config.init_seeded(&device, 0);
        prefill(c, backend, &model);
        decode_step(c, backend, &model);
        whole_generation(c, backend, &model);
    }
}

criterion_group!(generation, benches);
criterion_main!(generation);
