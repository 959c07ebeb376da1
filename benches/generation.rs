//! Criterion benchmarks on GPT-2-124M-shaped random weights (speed does not depend on the
//! values): prompt processing at several lengths and a short whole generation.
//!
//! `cargo bench` measures; `cargo bench -- --test` runs each once, as CI does.

use std::hint::black_box;

use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nexttoken::generate::{GenerationConfig, generate};
use nexttoken::model::{Gpt2, Gpt2Config};

/// Fresh ids for every call: some backends reuse results for identical inputs.
fn ids(seed: u32, t: usize, device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = (0..t as u32)
        .map(|i| i64::from((seed * 7919 + i * 104_729) % 50257))
        .collect();
    Tensor::from_data(TensorData::new(flat, [1, t]), device)
}

fn benches(c: &mut Criterion) {
    let device = Device::flex();
    let model: Gpt2 = Gpt2Config::gpt2().init(&device);
    let backend = "flex";

    // Until generation keeps a KV cache, one step at position t costs one forward pass over t
    // tokens, so this group also gives the step cost at those positions.
    let mut prefill = c.benchmark_group(format!("prefill/{backend}"));
    prefill.sample_size(10);
    for t in [8, 32, 128] {
        prefill.throughput(Throughput::Elements(t as u64));
        let mut seed = 0;
        prefill.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, &t| {
            b.iter(|| {
                seed += 1;
                black_box(model.forward_last(ids(seed, t, &device)).into_data())
            })
        });
    }
    prefill.finish();

    let mut whole = c.benchmark_group(format!("generate/{backend}"));
    whole.sample_size(10);
    let new_tokens = 16;
    whole.throughput(Throughput::Elements(new_tokens as u64));
    let config = GenerationConfig::new(new_tokens).without_eos();
    whole.bench_function("prompt4_new16", |b| {
        let mut seed = 0u32;
        b.iter(|| {
            seed += 1;
            let prompt: Vec<u32> = (0..4).map(|i| (seed * 31 + i * 977) % 50257).collect();
            black_box(generate(&model, &[prompt], &config, |_| {}).map(|out| out.tokens))
        })
    });
    whole.finish();
}

criterion_group!(generation, benches);
criterion_main!(generation);
